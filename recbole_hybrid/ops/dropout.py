"""Dropout whose mask on float CPU tensors is a hash of (seed, element index), computed in
the C++ extension (csrc/mamba_cpu.cpp) about ten times faster than torch's Bernoulli draw
and regenerated in backward instead of stored. The seed is drawn from torch's default
generator, so `torch.manual_seed` (RecBole's `init_seed`) makes runs repeat. Other devices
and dtypes, or without the extension, use `torch.nn.functional.dropout`.
"""

import torch
import torch.nn.functional as F

from recbole_hybrid.ops import cpp_extension


def dropout(x, p, training=True):
    """Zero each element with probability p, scale the rest by 1 / (1 - p); x any shape."""
    if not training or p == 0:
        return x
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and p < 1 \
            and cpp_extension.load() is not None:
        seed = int(torch.randint(2 ** 62, ()))
        return CpuDropout.apply(x, p, seed)
    return F.dropout(x, p, training)


class CpuDropout(torch.autograd.Function):
    """The C++ kernel; its backward applies the same mask (same seed) to the gradient."""

    @staticmethod
    def forward(ctx, x, p, seed):
        ctx.p, ctx.seed = p, seed
        return cpp_extension.load().dropout(x, p, seed)

    @staticmethod
    def backward(ctx, grad_out):
        return cpp_extension.load().dropout(grad_out, ctx.p, ctx.seed), None, None
