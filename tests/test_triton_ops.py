"""The Triton kernels (selective scan, causal convolution) against step-by-step references.

Without CUDA they run under Triton's interpreter (TRITON_INTERPRET=1, set here before the
kernels are defined) on tiny shapes with tiny blocks, so that every code path (several
channel blocks, a last partial block, sequences that end inside a chunk) is taken in a few
seconds; with CUDA the same tests run compiled, and more compare the Triton path with this
package's PyTorch path and with the mamba_ssm / causal_conv1d kernels where installed.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from triton.runtime.errors import OutOfResources  # noqa: E402

from recbole_hybrid.errors import ConfigError  # noqa: E402
from recbole_hybrid.modules import Mamba  # noqa: E402
from recbole_hybrid.ops import causal_conv1d, selective_scan  # noqa: E402
from recbole_hybrid.ops import triton_conv, triton_fallback, triton_scan  # noqa: E402
from test_conv_cpu import conv_inputs, reference_conv  # noqa: E402
from test_selective_scan import VARIANTS, make_inputs, reference_scan, relative_error  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_ONLY = pytest.mark.skipif(DEVICE != "cuda", reason="compares compiled kernels on CUDA")
pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="without CUDA the Triton kernels need TRITON_INTERPRET=1"),
]


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks small enough that the tests' shapes span several of them: 4 channels x 4
    states per scan program, 2 steps per backward chunk, 4 x 4 per convolution program."""
    monkeypatch.setattr(triton_scan, "block_sizes", lambda d_state: (16, 1))
    monkeypatch.setattr(triton_scan, "CHUNK", 2)
    monkeypatch.setattr(triton_conv, "BLOCK_D", 4)
    monkeypatch.setattr(triton_conv, "BLOCK_L", 4)


def on_device(inputs, dtype=None):
    """Fresh leaf copies on DEVICE (in `dtype` if given)."""
    return {k: v.detach().to(DEVICE, dtype or v.dtype).requires_grad_() if v is not None else None
            for k, v in inputs.items()}


def scan_and_grads(fn, inputs, softplus, loss_of_last=True, **kwargs):
    """out, last state, and the gradients of every input of a fixed random loss of both
    (of out alone where not `loss_of_last`)."""
    out, last = fn(**inputs, delta_softplus=softplus, **kwargs)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    last_weights = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last) * loss_of_last
    loss = (out * weights).sum() + (last * last_weights).sum()
    tensors = {k: v for k, v in inputs.items() if v is not None}
    grads = torch.autograd.grad(loss, list(tensors.values()))
    return out.detach(), last.detach(), dict(zip(tensors, grads))


def triton_path(**inputs):
    return selective_scan(**inputs, return_last_state=True, impl="triton")


def assert_close(result, expected, tolerance):
    (out, last, grads), (ref_out, ref_last, ref_grads) = result, expected
    assert relative_error(out.double().cpu(), ref_out.double().cpu()) <= tolerance, "out"
    assert relative_error(last.double().cpu(), ref_last.double().cpu()) <= tolerance, "last state"
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        error = relative_error(grads[name].double().cpu(), ref_grads[name].double().cpu())
        assert error <= tolerance, (name, error)


@pytest.mark.parametrize("softplus,with_D,with_z,with_bias", VARIANTS)
def test_scan_float64_parity(tiny_blocks, softplus, with_D, with_z, with_bias):
    """Every combination of D, z, delta_bias and softplus; 5 steps in chunks of 2; without
    softplus delta takes both signs (decays above 1)."""
    inputs = make_inputs(5, torch.float64, with_D, with_z, with_bias, batch=1, d_inner=4)
    if not softplus:
        inputs["delta"] = (inputs["delta"].detach() - 0.2).requires_grad_()
    expected = scan_and_grads(reference_scan, inputs, softplus)
    assert_close(scan_and_grads(triton_path, on_device(inputs), softplus), expected, 1e-9)


def test_scan_reads_any_layout(tiny_blocks):
    """Two batch rows, 6 channels in blocks of 4, inputs as the Mamba block passes them:
    views of (batch, L, features) tensors; the outputs come back in that layout."""
    batch, d_inner, d_state, length = 2, 6, 4, 5
    inputs = make_inputs(length, torch.float64, True, True, True, batch=batch, d_inner=d_inner)
    ref_out, ref_last, ref_grads = scan_and_grads(reference_scan, inputs, True)
    names = ("u", "delta", "z", "B", "C")
    features = torch.cat([inputs[k].detach().transpose(1, 2) for k in names], dim=-1)
    features = features.to(DEVICE).requires_grad_()  # (batch, L, 3 d_inner + 2 d_state)
    u, delta, z, B, C = (part.transpose(1, 2) for part in
                         features.split([d_inner, d_inner, d_inner, d_state, d_state], dim=-1))
    params = on_device({k: inputs[k] for k in ("A", "D", "delta_bias")})
    out, last = selective_scan(u, delta, params["A"], B, C, params["D"], z, params["delta_bias"],
                               True, True, impl="triton")
    assert out.transpose(1, 2).is_contiguous()
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    last_weights = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last)
    ((out * weights).sum() + (last * last_weights).sum()).backward()
    assert relative_error(out.detach().cpu(), ref_out) <= 1e-9
    assert relative_error(last.detach().cpu(), ref_last) <= 1e-9
    feature_grads = features.grad.cpu().split([d_inner, d_inner, d_inner, d_state, d_state], dim=-1)
    for name, grad in zip(names, feature_grads):
        assert relative_error(grad.transpose(1, 2), ref_grads[name]) <= 1e-9, name
    for name, tensor in params.items():
        assert relative_error(tensor.grad.cpu(), ref_grads[name]) <= 1e-9, name


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                             (torch.bfloat16, 1e-2)])
def test_scan_low_precision(tiny_blocks, dtype, tolerance):
    """float32, float16 (V100's autocast) and bfloat16 inputs, float32 sums: against the
    float64 reference on the same (rounded) inputs; half-precision outputs and gradients are
    rounded to their dtype at the end (float16: 11 bits, bfloat16: 8)."""
    inputs = make_inputs(5, torch.float64, True, True, True, batch=1, d_inner=6)
    low = on_device(inputs, dtype)
    expected = scan_and_grads(reference_scan, on_device({k: v.double() if v is not None else None
                                                         for k, v in low.items()}), True)
    out, last, grads = scan_and_grads(triton_path, low, True)
    assert out.dtype == dtype and last.dtype == torch.float32
    assert all(grads[k].dtype == dtype for k in grads)
    assert_close((out, last, grads), expected, tolerance)


def test_scan_with_decays_that_underflow(tiny_blocks):
    """delta * A far below -126: float32 decays are exactly 0, nothing becomes inf or nan."""
    inputs = make_inputs(4, torch.float32, True, True, True, batch=1, d_inner=4)
    inputs["delta"] = (inputs["delta"].detach() * 400).requires_grad_()
    result = scan_and_grads(triton_path, on_device(inputs), True)
    expected = scan_and_grads(reference_scan, on_device(inputs, torch.float64), True)
    assert all(torch.isfinite(t).all() for t in [result[0], result[1], *result[2].values()])
    assert_close(result, expected, 1e-5)


@pytest.mark.parametrize("silu,with_bias,width,channels_last",
                         [(True, True, 4, True), (False, False, 4, False), (True, False, 2, False)])
def test_conv_float64_parity(tiny_blocks, silu, with_bias, width, channels_last):
    """Forward and the gradients of x, weight and bias; 6 channels and 5 steps in blocks of
    4; x contiguous or a view of a (batch, L, 2 channels) tensor, as the Mamba block has it."""
    (x, weight, bias), grad_out = conv_inputs(2, 6, 5, width, torch.float64, with_bias,
                                              channels_last)
    leaves = [t for t in (x, weight, bias) if t is not None]
    expected = reference_conv(x, weight, bias, silu)
    ref_grads = torch.autograd.grad(expected, leaves, grad_out)
    ours = [t.detach().to(DEVICE).requires_grad_() for t in leaves]
    out = causal_conv1d(ours[0], ours[1], ours[2] if with_bias else None,
                        "silu" if silu else None, impl="triton")
    grads = torch.autograd.grad(out, ours, grad_out.to(DEVICE))
    assert relative_error(out.detach().cpu(), expected.detach()) <= 1e-12
    for name, grad, ref in zip(("x", "weight", "bias"), grads, ref_grads):
        assert relative_error(grad.cpu(), ref) <= 1e-12, name


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_conv_low_precision(tiny_blocks, dtype, tolerance):
    """Half-precision x, weight and bias (float32 sums): against the float64 reference on
    the same rounded inputs, the output and gradients in the inputs' dtype."""
    (x, weight, bias), grad_out = conv_inputs(2, 6, 5, 4, torch.float64, True, True)
    low = [t.detach().to(DEVICE, dtype).requires_grad_() for t in (x, weight, bias)]
    rounded = [t.detach().double().cpu().requires_grad_() for t in low]
    expected = reference_conv(*rounded, True)
    ref_grads = torch.autograd.grad(expected, rounded, grad_out.to(dtype).double())
    out = causal_conv1d(*low, "silu", impl="triton")
    grads = torch.autograd.grad(out, low, grad_out.to(DEVICE, dtype))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert relative_error(out.detach().double().cpu(), expected.detach()) <= tolerance
    for name, grad, ref in zip(("x", "weight", "bias"), grads, ref_grads):
        assert relative_error(grad.double().cpu(), ref) <= tolerance, name


def test_mamba_block_on_triton_matches_torch_path(tiny_blocks):
    """The whole block, both ops on Triton, against the block on this device's own path."""
    torch.manual_seed(0)
    block = Mamba(d_model=4, d_state=4, d_conv=3, expand=1.5).double().to(DEVICE)
    x = torch.randn(2, 4, 4, dtype=torch.float64, device=DEVICE)
    results = []
    for impl in ("triton", "torch"):
        block.impl = impl
        block.zero_grad()
        out = block(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}))
    (out, grads), (ref_out, ref_grads) = results
    assert relative_error(out, ref_out) <= 1e-10
    for name in grads:
        assert relative_error(grads[name], ref_grads[name]) <= 1e-10, name


def block_and_grads(block, x, impl):
    """The block's output on `impl` and the gradients of its parameters."""
    block.impl = impl
    block.zero_grad()
    out = block(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}


def cannot_launch(*args, **kwargs):
    """What Triton raises for a kernel the card cannot run."""
    raise OutOfResources(300000, 98304, "shared memory")


@pytest.fixture
def fresh_process(monkeypatch):
    """Triton has not failed in this process yet (the fallback's state is per process)."""
    monkeypatch.setattr(triton_fallback, "_failed", {})


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_triton_kernels_that_cannot_launch_fall_back_with_one_warning(
        where, tiny_blocks, fresh_process, monkeypatch, recwarn):
    """A launch failure of the Triton kernels (simulated, as on a card they do not fit): the
    ops take the torch path with one warning, and give its results (the backward's case:
    Triton's output, gradients recomputed on the torch path); later calls go there at once."""
    torch.manual_seed(0)
    block = Mamba(d_model=4, d_state=4, d_conv=3, expand=1.5).double().to(DEVICE)
    x = torch.randn(2, 4, 4, dtype=torch.float64, device=DEVICE)
    ref_out, ref_grads = block_and_grads(block, x, "torch")
    if where == "forward":
        monkeypatch.setattr(triton_scan, "_Launch", cannot_launch)
        monkeypatch.setattr(triton_conv, "_grid", cannot_launch)
    else:
        monkeypatch.setattr(triton_scan, "_backward", cannot_launch)
        monkeypatch.setattr(triton_conv, "_backward", cannot_launch)
    for _ in range(2):
        out, grads = block_and_grads(block, x, "triton")
        assert relative_error(out, ref_out) <= 1e-10
        for name in grads:
            assert relative_error(grads[name], ref_grads[name]) <= 1e-10, name
    (warning,) = [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert "its kernel failed to compile or launch (OutOfResources: out of resource: shared " \
           "memory" in str(warning.message)
    assert "this package's own path (PyTorch on CUDA, C++ on CPU)" in str(warning.message)


def test_an_error_that_is_not_triton_s_is_not_taken_for_a_failed_kernel(
        tiny_blocks, fresh_process, monkeypatch):
    def wrong(*args, **kwargs):
        raise ValueError("a bug of ours")

    monkeypatch.setattr(triton_scan, "_Launch", wrong)
    inputs = on_device(make_inputs(5, torch.float64, True, True, True, batch=1, d_inner=4))
    with pytest.raises(ValueError, match="a bug of ours"):
        triton_path(**inputs, delta_softplus=True)
    assert triton_fallback._failed == {}


def test_cards_older_than_volta_do_not_try_triton_and_bfloat16_needs_ampere():
    assert triton_fallback.capability_reason((7, 0), "Tesla V100") is None
    assert triton_fallback.capability_reason((6, 0), "Tesla P100") == (
        "Tesla P100 has compute capability 6.0, and Triton compiles for 7.0 and above")
    triton_fallback.check_bfloat16((8, 0), "A100")
    with pytest.raises(ConfigError, match=r"bfloat16 on Tesla V100 \(compute capability 7.0\)"
                       r".*use float16 instead"):
        triton_fallback.check_bfloat16((7, 0), "Tesla V100")


@CUDA_ONLY
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("other", ["torch", "kernel"])
def test_scan_matches_torch_path_and_kernel_on_cuda(other, dtype, tolerance):
    """Production block sizes, a Mamba-sized problem: Triton against this package's PyTorch
    path and mamba_ssm's kernel (float32; skipped where it is not installed), outputs and
    every gradient."""
    if other == "kernel":
        pytest.importorskip("mamba_ssm", reason="compares with mamba_ssm's kernel")
        if dtype != torch.float32:
            pytest.skip("mamba_ssm's kernel takes its A, D, delta_bias in float32 only")
    inputs = make_inputs(100, torch.float32, True, True, True, batch=4, d_inner=64, d_state=16)
    cuda = on_device(inputs, dtype)
    # mamba_ssm's backward ignores the last state's gradient: there the loss is of out alone
    loss_of_last = other != "kernel"
    expected = scan_and_grads(selective_scan, cuda, True, loss_of_last, return_last_state=True,
                              impl=other)
    assert_close(scan_and_grads(triton_path, cuda, True, loss_of_last), expected, tolerance)


@CUDA_ONLY
@pytest.mark.parametrize("other", ["torch", "kernel"])
def test_mamba_block_matches_torch_path_and_kernels_on_cuda(other):
    """The block on Triton against the block on the PyTorch path and on the mamba_ssm /
    causal_conv1d kernels (skipped where mamba_ssm is not installed): output, input and
    parameter gradients."""
    if other == "kernel":
        pytest.importorskip("mamba_ssm", reason="compares with mamba_ssm's kernels")
    torch.manual_seed(0)
    block = Mamba(d_model=64, d_state=32, d_conv=4, expand=2).cuda()
    x = torch.randn(8, 50, 64, device="cuda", requires_grad=True)
    results = []
    for impl in ("triton", other):
        block.impl = impl
        block.zero_grad()
        x.grad = None
        out = block(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}
                        | {"x": x.grad.clone()}))
    (out, grads), (ref_out, ref_grads) = results
    assert relative_error(out, ref_out) < 1e-4
    for name in grads:
        assert relative_error(grads[name], ref_grads[name]) < 1e-3, name
