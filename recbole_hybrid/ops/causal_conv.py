"""Causal depthwise convolution with the interface of the causal_conv1d package.

As in mamba_ssm, the causal_conv1d kernel is optional: mamba_impl='kernel' forces mamba_ssm's
scan, and the convolution uses causal_conv1d where it is installed, PyTorch's conv1d otherwise.
"""

import torch.nn.functional as F

from recbole_hybrid.ops import backend


def causal_conv1d(x, weight, bias=None, activation=None, *, impl=None):
    """Depthwise conv over time that sees only the past: x (batch, channels, L),
    weight (channels, width), bias (channels,); activation None, "silu" or "swish"."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    if backend.requested_impl(impl) != "torch" and backend.use_kernel("auto", x, "causal_conv1d"):
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(x, weight, bias, activation)
    channels, width = weight.shape
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight[:, None, :], bias, groups=channels)
    return F.silu(out) if activation else out
