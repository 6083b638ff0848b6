"""selective_scan against an independent step-by-step reference, forward and gradients."""

import itertools
import subprocess
import sys

import pytest
import torch

from recbole_hybrid.errors import ConfigError
from recbole_hybrid.ops import backend, causal_conv1d, cpp_extension, selective_scan
from recbole_hybrid.ops.selective_scan import CHUNK_LEN, CppCore


def reference_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The definition, one time step and one channel pair at a time, through autograd."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    batch, d_inner, length = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A[None])
        h = decay * h + delta[:, :, t, None] * u[:, :, t, None] * B[:, None, :, t]
        y = torch.einsum("bdn,bn->bd", h, C[:, :, t])
        if D is not None:
            y = y + D * u[:, :, t]
        if z is not None:
            y = y * z[:, :, t] * torch.sigmoid(z[:, :, t])
        outputs.append(y)
    return torch.stack(outputs, dim=-1), h


def make_inputs(length, dtype, with_D, with_z, with_bias, batch=2, d_inner=3, d_state=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    return {
        "u": rand(batch, d_inner, length),
        "delta": (torch.rand(batch, d_inner, length, generator=g, dtype=dtype) * 0.5).requires_grad_(),
        "A": (-torch.rand(d_inner, d_state, generator=g, dtype=dtype) * 2 - 0.1).requires_grad_(),
        "B": rand(batch, d_state, length),
        "C": rand(batch, d_state, length),
        "D": rand(d_inner) if with_D else None,
        "z": rand(batch, d_inner, length) if with_z else None,
        "delta_bias": rand(d_inner, scale=0.3) if with_bias else None,
    }


def run_both(inputs, softplus, grad_seed=1):
    tensors = [v for v in inputs.values() if v is not None]
    results = []
    for fn in (selective_scan, reference_scan):
        for tensor in tensors:
            tensor.grad = None
        if fn is selective_scan:
            out, last = fn(**inputs, delta_softplus=softplus, return_last_state=True)
        else:
            out, last = fn(**inputs, delta_softplus=softplus)
        g = torch.Generator().manual_seed(grad_seed)
        weights = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        last_weights = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
        ((out * weights).sum() + (last * last_weights).sum()).backward()
        grads = {k: v.grad.clone() for k, v in inputs.items() if v is not None}
        results.append((out.detach(), last.detach(), grads))
    return results


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


VARIANTS = list(itertools.product([False, True], repeat=4))  # softplus, D, z, bias


@pytest.fixture(params=["cpp", "chunked"])
def core(request, monkeypatch):
    """Run a test once with the C++ CPU scan and once with the PyTorch chunked scan."""
    if request.param == "chunked":
        monkeypatch.setenv(cpp_extension.ENV_VAR, "0")
    probe = torch.zeros(1)
    assert CppCore.serves(probe) == (request.param == "cpp"), "the C++ scan did not build"
    return request.param


@pytest.mark.parametrize("length", [1, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN + 1,
                                    pytest.param(200, marks=pytest.mark.slow)])
@pytest.mark.parametrize("softplus,with_D,with_z,with_bias", VARIANTS)
def test_float64_parity(core, length, softplus, with_D, with_z, with_bias):
    inputs = make_inputs(length, torch.float64, with_D, with_z, with_bias)
    (out, last, grads), (ref_out, ref_last, ref_grads) = run_both(inputs, softplus)
    assert relative_error(out, ref_out) <= 1e-9
    assert relative_error(last, ref_last) <= 1e-9
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert relative_error(grads[name], ref_grads[name]) <= 1e-9, name


@pytest.mark.parametrize("d_state", [8, 16, 32, 64, 5])
def test_float64_parity_per_state_size(core, d_state):
    """The C++ scan has loops compiled for d_state 8, 16, 32 and 64 and one for any other."""
    inputs = make_inputs(CHUNK_LEN + 1, torch.float64, True, True, True, batch=2, d_inner=3,
                         d_state=d_state)
    (out, last, grads), (ref_out, ref_last, ref_grads) = run_both(inputs, True)
    assert relative_error(out, ref_out) <= 1e-9
    assert relative_error(last, ref_last) <= 1e-9
    for name in grads:
        assert relative_error(grads[name], ref_grads[name]) <= 1e-9, name


@pytest.mark.parametrize("length", [CHUNK_LEN + 1, 64])
def test_float32_parity(core, length):
    inputs = make_inputs(length, torch.float32, True, True, True, batch=3, d_inner=8, d_state=16)
    (out, last, grads), _ = run_both(inputs, True)
    inputs64 = {k: v.detach().double().requires_grad_() if v is not None else None for k, v in inputs.items()}
    _, (ref_out, ref_last, ref_grads) = run_both(inputs64, True)
    assert out.dtype == torch.float32
    assert relative_error(out.double(), ref_out) <= 1e-4
    assert relative_error(last.double(), ref_last) <= 1e-4
    for name in grads:
        assert relative_error(grads[name].double(), ref_grads[name]) <= 1e-4, name


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_negative_steps_without_softplus(core, dtype, tolerance):
    """mamba_ssm's semantics allow any real delta when softplus is off: decays above 1."""
    inputs = make_inputs(30, dtype, True, True, False)
    inputs["delta"] = (torch.randn(inputs["delta"].shape, generator=torch.Generator().manual_seed(3),
                                   dtype=torch.float64) * 0.3).to(dtype).requires_grad_()
    assert (inputs["delta"] < 0).any()
    (out, last, grads), _ = run_both(inputs, False)
    ref64 = {k: v.detach().double().requires_grad_() if v is not None else None for k, v in inputs.items()}
    _, (ref_out, ref_last, ref_grads) = run_both(ref64, False)
    assert relative_error(out.double(), ref_out) <= tolerance
    assert relative_error(last.double(), ref_last) <= tolerance
    for name in grads:
        assert relative_error(grads[name].double(), ref_grads[name]) <= tolerance, name


def test_gradcheck_tiny(core):
    inputs = make_inputs(CHUNK_LEN + 2, torch.float64, True, True, True, batch=1, d_inner=2, d_state=2)
    names = list(inputs)

    def fn(*tensors):
        out, last = selective_scan(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True)
        return out, last

    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names))


def test_half_precision_accumulates_in_float32(core):
    inputs = make_inputs(40, torch.float32, True, True, True, batch=2, d_inner=8, d_state=16)
    half = {k: v.detach().to(torch.bfloat16) if v is not None else None for k, v in inputs.items()}
    out = selective_scan(**half, delta_softplus=True)
    ref, _ = reference_scan(**{k: v.detach() if v is not None else None for k, v in inputs.items()},
                            delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), ref) < 3e-2  # bf16 inputs and output rounding only


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_precision_parity_with_gradients(core, dtype, tolerance):
    """What autocast hands the scan (half-precision inputs): output and every gradient in
    the inputs' dtype, against the float64 reference on the same rounded inputs (the sums
    are float32: only the final rounding to the dtype differs)."""
    inputs = make_inputs(13, torch.float64, True, True, True, batch=2, d_inner=3, d_state=4)
    half = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
    exact = {k: v.detach().double().requires_grad_() for k, v in half.items()}
    results = []
    for tensors, scan in ((half, selective_scan), (exact, reference_scan)):
        out, last = scan(**tensors, delta_softplus=True, **(
            {"return_last_state": True} if scan is selective_scan else {}))
        g = torch.Generator().manual_seed(1)
        loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum() \
            + (last.double() * torch.randn(last.shape, generator=g, dtype=torch.float64)).sum()
        results.append((out, last, torch.autograd.grad(loss, list(tensors.values()))))
    (out, last, grads), (ref_out, ref_last, ref_grads) = results
    assert out.dtype == dtype and last.dtype == torch.float32
    assert relative_error(out.double(), ref_out) <= tolerance
    assert relative_error(last.double(), ref_last) <= 1e-5
    for name, grad, ref in zip(half, grads, ref_grads):
        assert grad.dtype == dtype and relative_error(grad.double(), ref) <= tolerance, name


def test_long_sequences_with_large_steps_stay_finite(core):
    inputs = make_inputs(500, torch.float32, True, True, True)
    inputs["delta"] = (inputs["delta"].detach() * 40).requires_grad_()  # exp(delta*A) underflows to 0
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    (out.sum() + last.sum()).backward()
    assert torch.isfinite(out).all() and all(
        torch.isfinite(v.grad).all() for v in inputs.values() if v is not None
    )


def test_bad_shapes_are_explained():
    inputs = make_inputs(5, torch.float32, True, False, False)
    inputs["B"] = inputs["B"][:, :, :4]
    with pytest.raises(ValueError, match=r"B has shape \(2, 4, 4\), expected \(2, 4, 5\)"):
        selective_scan(**inputs)


def test_forcing_the_kernel_without_mamba_ssm_is_a_clear_error():
    inputs = make_inputs(5, torch.float32, True, False, False)
    with pytest.raises(ConfigError, match=r"pip install \.\[cuda\]|CUDA tensors only"):
        selective_scan(**inputs, impl="kernel")


def test_forcing_the_kernel_through_the_environment(monkeypatch):
    monkeypatch.setenv("RECBOLE_HYBRID_MAMBA_IMPL", "kernel")
    inputs = make_inputs(5, torch.float32, True, False, False)
    with pytest.raises(ConfigError, match="mamba_impl='kernel'"):
        selective_scan(**inputs)
    with pytest.raises(ConfigError, match="mamba_impl='kernel'"):  # the models' default
        selective_scan(**inputs, impl="auto")
    forced_torch = selective_scan(**inputs, impl="torch")  # the explicit setting wins
    expected, _ = reference_scan(**{k: v.detach() if v is not None else None for k, v in inputs.items()},
                                 delta_softplus=False)
    assert relative_error(forced_torch.detach(), expected) <= 1e-5
    monkeypatch.setenv("RECBOLE_HYBRID_MAMBA_IMPL", "fast")
    with pytest.raises(ValueError, match="RECBOLE_HYBRID_MAMBA_IMPL='fast'"):
        selective_scan(**inputs)


def test_forcing_triton_on_a_cpu_tensor_is_a_clear_error(monkeypatch):
    """Triton runs CUDA tensors (CPU ones only in its interpreter); the message says what to
    use instead, whether triton is installed or not."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_inputs(5, torch.float32, True, True, True)
    for installed, message in ((True, "run on CUDA tensors, got cpu"),
                               (False, "needs the triton package")):
        monkeypatch.setitem(backend._available, "triton", installed)
        for op in (lambda: selective_scan(**inputs, impl="triton"),
                   lambda: causal_conv1d(inputs["u"], inputs["A"][:, :3], None, impl="triton")):
            with pytest.raises(ConfigError, match=f"mamba_impl='triton'.*{message}.*'torch'"):
                op()


def test_cpu_runs_never_import_triton(tmp_path):
    """A CPU install needs no triton: the Mamba block, forward and backward on every CPU path,
    imports none of it."""
    script = (
        "import os, sys, torch\n"
        "from recbole_hybrid.modules import Mamba\n"
        "block = Mamba(d_model=8, d_state=4)\n"
        "for impl in ('auto', 'torch'):\n"
        "    block.impl = impl\n"
        "    block(torch.randn(2, 5, 8)).sum().backward()\n"
        "os.environ['RECBOLE_HYBRID_CPU_KERNEL'] = '0'  # and the PyTorch fallbacks\n"
        "block(torch.randn(2, 5, 8)).sum().backward()\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the mamba_ssm kernel needs CUDA")
def test_matches_mamba_ssm_kernel_on_cuda():
    pytest.importorskip("mamba_ssm")
    inputs = make_inputs(100, torch.float32, True, True, True, batch=4, d_inner=64, d_state=16)
    cuda = {k: v.detach().cuda().requires_grad_() if v is not None else None for k, v in inputs.items()}
    outs = []
    for impl in ("torch", "kernel"):
        for v in cuda.values():
            if v is not None:
                v.grad = None
        out, last = selective_scan(**cuda, delta_softplus=True, return_last_state=True, impl=impl)
        out.square().sum().backward()
        outs.append((out.detach(), last.detach(), {k: v.grad.clone() for k, v in cuda.items() if v is not None}))
    (o1, l1, g1), (o2, l2, g2) = outs
    assert relative_error(o1, o2) <= 1e-4 and relative_error(l1, l2) <= 1e-4
    for name in g1:
        assert relative_error(g1[name], g2[name]) <= 1e-3, name
