"""Causal depthwise convolution with the interface of the causal_conv1d package.

Which implementation runs (backend.conv_path): causal_conv1d's CUDA kernel where it is
installed (optional, as in mamba_ssm), else Triton on CUDA tensors; on float CPU tensors the
C++ kernel (csrc/mamba_cpu.cpp), which reads x in place where its channel stride is 1 (the
Mamba block's view of in_proj's output) and writes its output as a view of a (batch, L,
channels) tensor, the layout the selective scan and x_proj read; PyTorch's conv1d where
neither applies. The Triton and C++ outputs have that layout too.
"""

import torch
import torch.nn.functional as F

from recbole_hybrid.ops import backend, cpp_extension, triton_fallback


def causal_conv1d(x, weight, bias=None, activation=None, *, impl=None):
    """Depthwise conv over time that sees only the past: x (batch, channels, L),
    weight (channels, width), bias (channels,); activation None, "silu" or "swish"."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    path = backend.conv_path(impl, x)
    if path == "kernel":
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(x, weight, bias, activation=activation)
    silu = activation is not None
    if path == "triton":
        from recbole_hybrid.ops import triton_conv

        return triton_fallback.run(
            lambda: triton_conv.causal_conv1d(x, weight, bias, silu, native_conv),
            lambda: native_conv(x, weight, bias, silu))
    return native_conv(x, weight, bias, silu)


def native_conv(x, weight, bias, silu):
    """This package's own path: C++ on float CPU tensors, else PyTorch's conv1d."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) \
            and cpp_extension.load() is not None:
        return CpuCausalConv.apply(x, weight, bias, silu)
    channels, width = weight.shape
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight[:, None, :], bias, groups=channels)
    return F.silu(out) if silu else out


class CpuCausalConv(torch.autograd.Function):
    """The C++ convolution; backward recomputes the pre-activation from x."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias)
        return cpp_extension.load().conv_forward(x, weight.to(x.dtype), _cast(bias, x.dtype), silu)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = cpp_extension.load().conv_backward(
            x, weight.to(x.dtype), _cast(bias, x.dtype), ctx.silu, grad_out.to(x.dtype))
        return (grad_x, grad_weight.to(weight.dtype),
                grad_bias.to(bias.dtype) if bias is not None else None, None)


def _cast(tensor, dtype):
    return tensor.to(dtype) if tensor is not None else None
