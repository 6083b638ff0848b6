"""Causal depthwise convolution (and silu) in Triton: CUDA tensors without the
causal_conv1d kernel, and any tensor under Triton's interpreter (TRITON_INTERPRET=1).

    pre[b, d, t] = bias[d] + sum_k weight[d, k] x[b, d, t - (W - 1) + k]   (x = 0 before t = 0)
    out = silu(pre) or pre

One program per (batch row, block of channels, block of time steps). Backward recomputes
pre where it needs it (W multiply-adds per value) instead of keeping it; the gradients of
weight and bias are written per program and summed with torch.
"""

import torch
import triton
import triton.language as tl

from recbole_hybrid.ops import triton_fallback
from recbole_hybrid.ops.triton_scan import channel_vector

BLOCK_D, BLOCK_L = 32, 32


def causal_conv1d(x, weight, bias, silu, native):
    """x (batch, channels, L) with any strides, weight (channels, W), bias (channels,) or
    None: out (batch, channels, L), a view of a (batch, L, channels) tensor. `native(x,
    weight, bias, silu)` (the same op on the native path) computes the gradients where the
    backward kernel cannot compile or launch."""
    return TritonConv.apply(x, weight, bias, silu, native)


class TritonConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu, native):
        ctx.silu, ctx.native = silu, native
        ctx.save_for_backward(x, weight, bias)
        batch, channels, length = x.shape
        out = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device).transpose(1, 2)
        _forward_kernel[_grid(x)](
            x, *x.stride(), weight, *weight.stride(), bias if bias is not None else weight,
            out, *out.stride(), channels, length, **_constants(x, weight, bias, silu),
        )
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grads = triton_fallback.run(
            lambda: _backward(ctx, grad_out),
            lambda: triton_fallback.native_grads(
                lambda x, weight, bias: (ctx.native(x, weight, bias, ctx.silu),),
                ctx.saved_tensors, (grad_out,)))
        return (*grads, None, None)


def _backward(ctx, grad_out):
    """The gradients of x, weight and bias, by the backward kernel."""
    x, weight, bias = ctx.saved_tensors
    batch, channels, length = x.shape
    grid = _grid(x)
    grad_x = torch.empty(batch, length, channels, dtype=x.dtype, device=x.device)
    grad_x = grad_x.transpose(1, 2)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    programs = batch * grid[2]  # partial sums of weight's and bias's gradients
    grad_weight_parts = torch.empty(programs, channels, weight.shape[1], dtype=compute,
                                    device=x.device)
    grad_bias_parts = torch.empty(programs, channels, dtype=compute, device=x.device)
    _backward_kernel[grid](
        x, *x.stride(), weight, *weight.stride(), bias if bias is not None else weight,
        grad_out, *grad_out.stride(), grad_x, *grad_x.stride(),
        grad_weight_parts, grad_bias_parts, channels, length,
        **_constants(x, weight, bias, ctx.silu),
    )
    grad_bias = grad_bias_parts.sum(0).to(bias.dtype) if bias is not None else None
    return grad_x, grad_weight_parts.sum(0).to(weight.dtype), grad_bias


def _grid(x):
    batch, channels, length = x.shape
    return batch, triton.cdiv(channels, BLOCK_D), triton.cdiv(length, BLOCK_L)


def _constants(x, weight, bias, silu):
    return {
        "HAS_BIAS": bias is not None, "SILU": bool(silu), "WIDTH": weight.shape[1],
        "COMPUTE": tl.float64 if x.dtype == torch.float64 else tl.float32,
        "BLOCK_D": BLOCK_D, "BLOCK_L": BLOCK_L,
    }


@triton.jit
def _preactivation(x_rows, s_x_l, weight_rows, s_w_k, bias, channel_mask, t, length,
                   WIDTH: tl.constexpr, COMPUTE: tl.constexpr):
    """pre at time steps t (BLOCK_L,) for the channels of x_rows (BLOCK_D,): (BLOCK_D, BLOCK_L)."""
    pre = tl.zeros([x_rows.shape[0], t.shape[0]], dtype=COMPUTE) + bias[:, None]
    for k in tl.static_range(WIDTH):
        source = t - (WIDTH - 1) + k
        inside = (source >= 0) & (source < length)
        x = tl.load(x_rows[:, None] + source[None, :] * s_x_l,
                    mask=channel_mask[:, None] & inside[None, :], other=0.0).to(COMPUTE)
        w = tl.load(weight_rows + k * s_w_k, mask=channel_mask, other=0.0).to(COMPUTE)
        pre += w[:, None] * x
    return pre


@triton.jit
def _forward_kernel(
    x_ptr, s_x_b, s_x_d, s_x_l, weight_ptr, s_w_d, s_w_k, bias_ptr,
    out_ptr, s_o_b, s_o_d, s_o_l, channels, length,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, WIDTH: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    channel_mask = d < channels
    bias = channel_vector(bias_ptr, d, channel_mask, HAS_BIAS, BLOCK_D, COMPUTE)
    out = _preactivation(x_ptr + b * s_x_b + d * s_x_d, s_x_l, weight_ptr + d * s_w_d, s_w_k,
                         bias, channel_mask, t, length, WIDTH, COMPUTE)
    if SILU:
        out = out * tl.sigmoid(out)
    tl.store(out_ptr + b * s_o_b + d[:, None] * s_o_d + t[None, :] * s_o_l, out,
             mask=channel_mask[:, None] & (t < length)[None, :])


@triton.jit
def _backward_kernel(
    x_ptr, s_x_b, s_x_d, s_x_l, weight_ptr, s_w_d, s_w_k, bias_ptr,
    grad_out_ptr, s_go_b, s_go_d, s_go_l, grad_x_ptr, s_gx_b, s_gx_d, s_gx_l,
    grad_weight_ptr, grad_bias_ptr, channels, length,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, WIDTH: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    channel_mask = d < channels
    bias = channel_vector(bias_ptr, d, channel_mask, HAS_BIAS, BLOCK_D, COMPUTE)
    x_rows = x_ptr + b * s_x_b + d * s_x_d
    weight_rows = weight_ptr + d * s_w_d
    grad_out_rows = grad_out_ptr + b * s_go_b + d * s_go_d
    # x[t] reaches pre[t + s] through weight[:, W - 1 - s], s = 0 .. W - 1.
    grad_x = tl.zeros([BLOCK_D, BLOCK_L], dtype=COMPUTE)
    for s in tl.static_range(WIDTH):
        target = t + s
        mask = channel_mask[:, None] & (target < length)[None, :]
        grad_pre = tl.load(grad_out_rows[:, None] + target[None, :] * s_go_l, mask=mask,
                           other=0.0).to(COMPUTE)
        if SILU:
            pre = _preactivation(x_rows, s_x_l, weight_rows, s_w_k, bias, channel_mask, target,
                                 length, WIDTH, COMPUTE)
            sig = tl.sigmoid(pre)
            grad_pre = grad_pre * sig * (1.0 + pre * (1.0 - sig))
        w = tl.load(weight_rows + (WIDTH - 1 - s) * s_w_k, mask=channel_mask, other=0.0)
        grad_x += w.to(COMPUTE)[:, None] * grad_pre
        if s == 0:  # this program's own outputs: the weight and bias gradients
            program = b * tl.num_programs(2) + tl.program_id(2)
            parts = (program * channels + d) * WIDTH
            for k in tl.static_range(WIDTH):
                source = t - (WIDTH - 1) + k
                inside = (source >= 0) & (source < length)
                x = tl.load(x_rows[:, None] + source[None, :] * s_x_l,
                            mask=channel_mask[:, None] & inside[None, :], other=0.0)
                tl.store(grad_weight_ptr + parts + k, tl.sum(grad_pre * x.to(COMPUTE), axis=1),
                         mask=channel_mask)
            tl.store(grad_bias_ptr + program * channels + d, tl.sum(grad_pre, axis=1),
                     mask=channel_mask)
    tl.store(grad_x_ptr + b * s_gx_b + d[:, None] * s_gx_d + t[None, :] * s_gx_l, grad_x,
             mask=channel_mask[:, None] & (t < length)[None, :])
