"""The Mamba block: mamba_ssm's parameters and init, causality, its forward by definition."""

import pytest
import torch
import torch.nn.functional as F

from recbole_hybrid.modules import Mamba
from recbole_hybrid.ops import causal_conv1d
from test_selective_scan import reference_scan


def test_parameter_names_and_shapes_are_mamba_ssm_s():
    block = Mamba(d_model=64, d_state=32, d_conv=4, expand=2)
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {
        "A_log": (128, 32), "D": (128,),
        "in_proj.weight": (256, 64),
        "conv1d.weight": (128, 1, 4), "conv1d.bias": (128,),
        "x_proj.weight": (4 + 2 * 32, 128),
        "dt_proj.weight": (128, 4), "dt_proj.bias": (128,),
        "out_proj.weight": (64, 128),
    }


def test_native_initialisation():
    block = Mamba(d_model=32, d_state=8, dt_min=0.001, dt_max=0.1)
    assert torch.allclose(block.A_log.exp(), torch.arange(1.0, 9.0).repeat(64, 1))
    assert torch.equal(block.D, torch.ones(64))
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    bound = block.dt_rank ** -0.5
    assert block.dt_proj.weight.abs().max() <= bound and block.dt_proj.weight.std() > bound / 4


def test_causal_conv1d_is_left_padded_depthwise_conv():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 5, 9), torch.randn(5, 4), torch.randn(5)
    conv = torch.nn.Conv1d(5, 5, 4, padding=3, groups=5)
    with torch.no_grad():
        conv.weight.copy_(weight[:, None, :])
        conv.bias.copy_(bias)
    expected = conv(x)[..., :9]
    assert torch.allclose(causal_conv1d(x, weight, bias), expected, atol=1e-6)
    assert torch.allclose(causal_conv1d(x, weight, bias, "silu"), F.silu(expected), atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, weight, bias, "relu")


def test_causal_conv1d_kernel_is_optional_as_in_mamba_ssm():
    """mamba_impl='kernel' forces mamba_ssm's scan; without a causal_conv1d kernel for these
    tensors (none on CPU) the convolution is PyTorch's, not an error."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 4, 7), torch.randn(4, 3), torch.randn(4)
    assert torch.equal(causal_conv1d(x, weight, bias, "silu", impl="kernel"),
                       causal_conv1d(x, weight, bias, "silu", impl="torch"))


def block_by_definition(block, x):
    """The block's forward, written out step by step from the Mamba block equations with the test's reference scan."""
    length = x.shape[1]
    xz = x @ block.in_proj.weight.T
    u, z = xz[..., : block.d_inner], xz[..., block.d_inner:]
    conv = torch.nn.functional.conv1d(u.transpose(1, 2), block.conv1d.weight, block.conv1d.bias,
                                      padding=block.d_conv - 1, groups=block.d_inner)[..., :length]
    u = F.silu(conv)  # (batch, d_inner, L)
    projected = u.transpose(1, 2) @ block.x_proj.weight.T
    dt = projected[..., : block.dt_rank]
    B = projected[..., block.dt_rank: block.dt_rank + block.d_state]
    C = projected[..., block.dt_rank + block.d_state:]
    delta = (dt @ block.dt_proj.weight.T).transpose(1, 2)
    y, _ = reference_scan(u, delta, -block.A_log.exp(), B.transpose(1, 2), C.transpose(1, 2),
                          block.D, z.transpose(1, 2), block.dt_proj.bias, True)
    return y.transpose(1, 2) @ block.out_proj.weight.T


def test_forward_matches_the_definition_in_float64():
    torch.manual_seed(0)
    block = Mamba(d_model=16, d_state=8, d_conv=4, expand=2).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    assert torch.allclose(block(x), block_by_definition(block, x), rtol=1e-9, atol=1e-12)


def test_output_at_t_ignores_inputs_after_t():
    torch.manual_seed(0)
    block = Mamba(d_model=16, d_state=8).double()
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 12:] = torch.randn(2, 18, 16, dtype=torch.float64)
    a, b = block(x), block(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_state_dict_round_trip():
    torch.manual_seed(0)
    first, second = Mamba(d_model=16, d_state=8), Mamba(d_model=16, d_state=8)
    second.load_state_dict(first.state_dict())
    x = torch.randn(2, 7, 16)
    assert torch.equal(first(x), second(x))


def test_gradients_reach_every_parameter():
    block = Mamba(d_model=16, d_state=8)
    block(torch.randn(2, 12, 16)).square().mean().backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_impossible_sizes_are_explained():
    with pytest.raises(ValueError, match="d_state must be a positive integer"):
        Mamba(d_model=16, d_state=0)
    with pytest.raises(ValueError, match="mamba_impl='fastest'"):
        Mamba(d_model=16, impl="fastest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mamba_ssm needs CUDA")
def test_same_function_as_mamba_ssm_on_cuda():
    mamba_ssm = pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    theirs = mamba_ssm.Mamba(d_model=64, d_state=32, d_conv=4, expand=2).cuda()
    ours = Mamba(d_model=64, d_state=32, d_conv=4, expand=2, impl="torch").cuda()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())  # and back
    x = torch.randn(8, 50, 64, device="cuda", requires_grad=True)
    outputs, grads = [], []
    for block in (theirs, ours):
        x.grad = None
        block.zero_grad()
        out = block(x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in block.named_parameters()} | {"x": x.grad.clone()})
    # float32 kernels vs float32 PyTorch: summation order differs; 1e-4 relative is the bar.
    assert (outputs[0] - outputs[1]).norm() / outputs[0].norm() < 1e-4
    for name in grads[0]:
        assert (grads[0][name] - grads[1][name]).norm() / grads[0][name].norm() < 1e-3, name


def assert_autocast_near_float32(block, x, dtype, scaler=None):
    """The block under autocast to `dtype` against float32: the output in `dtype`, near;
    the parameters' gradients (through `scaler` where given, unscaled) float32 and near:
    within 1% but for the sums over every step with cancellation (dt_proj.bias, about 6%),
    so the bound of 0.1 is the half precision's own rounding of the projections, not the
    Mamba ops' (those are checked against float64 in test_selective_scan, test_triton_ops)."""
    results = []
    for amp in (False, True):
        block.zero_grad()
        with torch.autocast(x.device.type, dtype=dtype, enabled=amp):
            out = block(x)
        loss = out.float().square().mean()
        scale = scaler.get_scale() if amp and scaler is not None else 1.0
        (scaler.scale(loss) if amp and scaler is not None else loss).backward()
        results.append((out, {n: p.grad / scale for n, p in block.named_parameters()}))
    (out32, grads32), (out16, grads16) = results
    assert out32.dtype == torch.float32 and out16.dtype == dtype
    assert ((out16.float() - out32).norm() / out32.norm()).item() < 2e-2
    for name, grad in grads16.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        error = ((grad - grads32[name]).norm() / grads32[name].norm()).item()
        assert error < 0.1, (name, error)


@pytest.mark.parametrize("core", ["cpp", "pytorch"])
def test_cpu_autocast_bfloat16_keeps_float32_state_and_gradients(core, monkeypatch):
    """RecBole's enable_amp on a CPU is autocast to bfloat16: the block's projections run in
    bfloat16, the scan and the convolution upcast and sum in float32 (the C++ core, or the
    PyTorch core where the C++ kernels cannot be built); a GradScaler scales the loss."""
    from recbole_hybrid.ops import cpp_extension
    from recbole_hybrid.ops.selective_scan import CppCore

    if core == "pytorch":
        monkeypatch.setattr(CppCore, "serves", staticmethod(lambda tensor: False))
    elif cpp_extension.load() is None:
        pytest.skip("the C++ kernels cannot be built here")
    torch.manual_seed(0)
    assert_autocast_near_float32(Mamba(d_model=16, d_state=8), torch.randn(2, 12, 16),
                                 torch.bfloat16, torch.amp.GradScaler("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's float16 autocast needs CUDA")
@pytest.mark.parametrize("impl", ["kernel", "triton", "torch"])
def test_cuda_autocast_float16_with_a_grad_scaler_on_every_path(impl):
    """enable_amp and enable_scaler on CUDA (float16, as on a V100) on each path."""
    from recbole_hybrid.ops import backend

    module = {"kernel": backend.SCAN_KERNEL, "triton": "triton"}.get(impl)
    if module and not backend.kernel_available(module):
        pytest.skip(f"{module} is not installed")
    torch.manual_seed(0)
    block = Mamba(d_model=64, d_state=16, impl=impl).cuda()
    assert_autocast_near_float32(block, torch.randn(8, 50, 64, device="cuda"), torch.float16,
                                 torch.amp.GradScaler("cuda"))
