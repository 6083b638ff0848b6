"""The C++ causal depthwise convolution against PyTorch's conv1d, forward and gradients;
how the causal_conv1d package's kernel is called."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from recbole_hybrid.ops import backend, causal_conv1d, cpp_extension
from recbole_hybrid.ops.causal_conv import CpuCausalConv
from test_selective_scan import relative_error


def reference_conv(x, weight, bias, silu):
    """PyTorch's conv1d, padded on the left: out[t] sees x[t - width + 1 .. t]."""
    out = F.conv1d(F.pad(x, (weight.shape[1] - 1, 0)), weight[:, None, :], bias, groups=x.shape[1])
    return F.silu(out) if silu else out


def conv_inputs(batch, channels, length, width, dtype, with_bias, channels_last, seed=0):
    """x (batch, channels, L), contiguous or a view of a (batch, L, 2 channels) tensor as the
    Mamba block passes it; weight, bias, and a gradient for the output."""
    g = torch.Generator().manual_seed(seed)
    if channels_last:
        x = torch.randn(batch, length, 2 * channels, generator=g, dtype=dtype)[..., :channels]
        x = x.transpose(1, 2)
    else:
        x = torch.randn(batch, channels, length, generator=g, dtype=dtype)
    weight = torch.randn(channels, width, generator=g, dtype=dtype)
    bias = torch.randn(channels, generator=g, dtype=dtype) if with_bias else None
    grad_out = torch.randn(batch, channels, length, generator=g, dtype=dtype)
    return [t.requires_grad_() if t is not None else None for t in (x, weight, bias)], grad_out


@pytest.fixture(autouse=True)
def the_cpp_extension_builds():
    assert cpp_extension.load() is not None, "the C++ kernels did not build"


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("length,width", [(9, 4), (2, 4), (7, 1), (5, 3)])
def test_float64_parity(silu, with_bias, channels_last, length, width):
    (x, weight, bias), grad_out = conv_inputs(2, 5, length, width, torch.float64, with_bias,
                                              channels_last)
    leaves = [t for t in (x, weight, bias) if t is not None]
    expected = reference_conv(x, weight, bias, silu)
    ref_grads = torch.autograd.grad(expected, leaves, grad_out)
    out = CpuCausalConv.apply(x, weight, bias, silu)
    grads = torch.autograd.grad(out, leaves, grad_out)
    assert relative_error(out, expected) <= 1e-13
    for name, grad, ref in zip(("x", "weight", "bias"), grads, ref_grads):
        assert relative_error(grad, ref) <= 1e-13, name


def test_float32_parity_and_the_layout_it_writes():
    """float32 to rounding; the output is a view of a (batch, L, channels) tensor, so x_proj
    reads it without a copy."""
    (x, weight, bias), grad_out = conv_inputs(3, 16, 20, 4, torch.float32, True, True)
    out = causal_conv1d(x, weight, bias, "silu")
    assert out.transpose(1, 2).is_contiguous()
    inputs64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    expected = reference_conv(*inputs64, True)
    grads = torch.autograd.grad(out, (x, weight, bias), grad_out)
    ref_grads = torch.autograd.grad(expected, inputs64, grad_out.double())
    assert relative_error(out.double(), expected) <= 1e-6
    for grad, ref in zip(grads, ref_grads):
        assert relative_error(grad.double(), ref) <= 1e-6


def test_pytorch_fallback_gives_the_same(monkeypatch):
    (x, weight, bias), _ = conv_inputs(2, 4, 6, 4, torch.float64, True, True)
    fused = causal_conv1d(x, weight, bias, "silu")
    monkeypatch.setenv(cpp_extension.ENV_VAR, "0")
    assert relative_error(causal_conv1d(x, weight, bias, "silu"), fused) <= 1e-13


def test_the_causal_conv1d_kernel_gets_the_activation_by_name(monkeypatch):
    """causal_conv1d 1.7.0 takes seq_idx, initial_states, ... before `activation`: given by
    position, "silu" landed in seq_idx and training on the kernel path failed on CUDA."""
    calls = []

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                         return_final_states=False, final_states_out=None, activation=None):
        calls.append((seq_idx, activation))
        return x

    monkeypatch.setitem(sys.modules, "causal_conv1d",
                        types.SimpleNamespace(causal_conv1d_fn=causal_conv1d_fn))
    monkeypatch.setattr(backend, "conv_path", lambda impl, tensor: "kernel")
    (x, weight, bias), _ = conv_inputs(2, 4, 6, 4, torch.float32, True, True)
    causal_conv1d(x, weight, bias, "silu")
    assert calls == [(None, "silu")]
