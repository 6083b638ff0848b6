"""The selective scan of Mamba, with the interface of mamba_ssm's `selective_scan_fn`.

    delta = softplus(delta + delta_bias)            (each step optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,       h_0 = 0
    y_t   = <h_t, C_t> + D * u_t
    out_t = y_t * silu(z_t)                         (when z is given)

Shapes: u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L);
D, delta_bias (d_inner,); the last state is (batch, d_inner, d_state). Real-valued only.

Without the CUDA kernels, `SelectiveScan` computes the same function exactly, with the
gradients of every input from the adjoint recurrence run in reverse, by one of two cores:
- `KernelCore`, CPU tensors: the C++ scan (ops/cpu_kernel.py), one (batch row, channel)
  at a time with its state in a small buffer; backward recomputes the states.
- `ChunkedCore`, any device, and the fallback: PyTorch over chunks of CHUNK_LEN steps,
  keeping only the state at each chunk start and recomputing a chunk's states in backward.
Decays are exp2(delta * A * log2(e)), exponentials of non-positive numbers only (A < 0,
delta >= 0); half-precision inputs are accumulated in float32.
"""

import math

import torch
import torch.nn.functional as F

from recbole_hybrid.ops import backend, cpu_kernel

CHUNK_LEN = 10
LOG2_E = math.log2(math.e)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, *, impl=None,
):
    """`out` (batch, d_inner, L), and the last state too when `return_last_state`."""
    if backend.use_kernel(impl, u, "mamba_ssm"):
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    out, last_state = SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last_state) if return_last_state else out


class SelectiveScan(torch.autograd.Function):
    """delta's bias and softplus, the D skip and the z gate around a core's scan."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        inputs = _ScanInputs(u, delta, A, B, C, delta_bias, delta_softplus)
        ctx.core = KernelCore if KernelCore.serves(u) else ChunkedCore
        y, last_state, saved = ctx.core.forward(inputs)
        if D is not None:
            y = y + D.to(y.dtype)[:, None] * inputs.u
        out = y * F.silu(z.to(y.dtype)) if z is not None else y
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, saved,
                              y if z is not None else None)
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx, grad_out, grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, saved, y = ctx.saved_tensors
        inputs = _ScanInputs(u, delta, A, B, C, delta_bias, ctx.delta_softplus)
        grad_out = grad_out.to(inputs.dt.dtype)
        grad_z = None
        if z is not None:
            z_ = z.to(y.dtype)
            gate = torch.sigmoid(z_)
            grad_y = grad_out * z_ * gate
            grad_z = (grad_out * y * gate * (1 + z_ * (1 - gate))).to(z.dtype)
        else:
            grad_y = grad_out
        if grad_last_state is not None:
            grad_last_state = grad_last_state.to(inputs.dt.dtype)
        grad_dt, grad_u, grad_A, grad_B, grad_C = ctx.core.backward(
            inputs, saved, grad_y, grad_last_state
        )
        grad_D = None
        if D is not None:
            grad_u = grad_u + grad_y * D.to(grad_y.dtype)[:, None]
            grad_D = (grad_y * inputs.u).sum((0, 2)).to(D.dtype)
        if ctx.delta_softplus:
            grad_dt = grad_dt * torch.sigmoid(inputs.dt_raw)
        grad_bias = grad_dt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        return (
            grad_u.to(u.dtype), grad_dt.to(delta.dtype), grad_A.to(A.dtype), grad_B.to(B.dtype),
            grad_C.to(C.dtype), grad_D, grad_z, grad_bias, None,
        )


class _ScanInputs:
    """The scan's inputs in compute precision (float64 stays, anything else is float32):
    dt = softplus(delta + bias) and u (batch, d_inner, L), B, C (batch, d_state, L),
    A and A2 = A * log2(e) (d_inner, d_state); dt_raw is dt before the softplus."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus):
        dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        self.dt_raw = delta.to(dtype)
        if delta_bias is not None:
            self.dt_raw = self.dt_raw + delta_bias.to(dtype)[:, None]
        self.dt = F.softplus(self.dt_raw) if delta_softplus else self.dt_raw
        self.u, self.B, self.C, self.A = (t.to(dtype) for t in (u, B, C, A))
        self.A2 = self.A * LOG2_E


class KernelCore:
    """The C++ scan on CPU tensors; nothing is kept for backward but the inputs."""

    @staticmethod
    def serves(tensor):
        return tensor.device.type == "cpu" and cpu_kernel.load() is not None

    @staticmethod
    def forward(x):
        y, last_state = cpu_kernel.load().scan_forward(
            x.dt.contiguous(), x.u.contiguous(), x.A2.contiguous(),
            x.B.transpose(1, 2).contiguous(), x.C.transpose(1, 2).contiguous(),
        )
        return y, last_state, None

    @staticmethod
    def backward(x, saved, grad_y, grad_last_state):
        grad_dt, grad_u, grad_A, grad_B, grad_C = cpu_kernel.load().scan_backward(
            x.dt.contiguous(), x.u.contiguous(), x.A.contiguous(), x.A2.contiguous(),
            x.B.transpose(1, 2).contiguous(), x.C.transpose(1, 2).contiguous(),
            grad_y.contiguous(),
            grad_last_state.contiguous() if grad_last_state is not None else None,
        )
        return grad_dt, grad_u, grad_A, grad_B.transpose(1, 2), grad_C.transpose(1, 2)


class ChunkedCore:
    """PyTorch over chunks of CHUNK_LEN steps; keeps the state at each chunk start."""

    @staticmethod
    def forward(x):
        dt, u, B, C = _time_major(x)
        y = dt.new_empty(dt.shape)  # (L, batch, d_inner)
        h = dt.new_zeros(*dt.shape[1:], x.A.shape[1])
        starts = []
        for s, e in _chunks(dt.shape[0]):
            starts.append(h)
            y[s:e], h = chunk_forward(h, dt[s:e], u[s:e], B[s:e], C[s:e], x.A2)
        return y.permute(1, 2, 0), h, torch.stack(starts)

    @staticmethod
    def backward(x, starts, grad_y, grad_last_state):
        dt, u, B, C = _time_major(x)
        grad_y = grad_y.permute(2, 0, 1).contiguous()
        grad_dt, grad_u = torch.empty_like(dt), torch.empty_like(dt)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(x.A)
        adjoint = grad_last_state.clone() if grad_last_state is not None else torch.zeros_like(starts[0])
        for k, (s, e) in reversed(list(enumerate(_chunks(dt.shape[0])))):
            grad_dt[s:e], grad_u[s:e], grad_B[s:e], grad_C[s:e], chunk_A, adjoint = chunk_backward(
                starts[k], dt[s:e], u[s:e], B[s:e], C[s:e], x.A, x.A2, grad_y[s:e], adjoint
            )
            grad_A += chunk_A
        return (grad_dt.permute(1, 2, 0), grad_u.permute(1, 2, 0), grad_A,
                grad_B.permute(1, 2, 0), grad_C.permute(1, 2, 0))


def _time_major(x):
    """dt, u (L, batch, d_inner) and B, C (L, batch, d_state), contiguous."""
    return tuple(t.permute(2, 0, 1).contiguous() for t in (x.dt, x.u, x.B, x.C))


def _chunks(length):
    return [(s, min(s + CHUNK_LEN, length)) for s in range(0, length, CHUNK_LEN)]


def chunk_forward(h, dt, u, B, C, A2):
    """Scan T steps from state h (batch, d_inner, d_state); dt, u (T, batch, d_inner);
    B, C (T, batch, d_state). Returns y (T, batch, d_inner) without the D term, and the
    state after the last step."""
    ys = []
    for t in range(dt.shape[0]):
        h = torch.exp2(dt[t, :, :, None] * A2) * h + (dt[t] * u[t])[:, :, None] * B[t][:, None, :]
        ys.append((h * C[t][:, None, :]).sum(-1))
    return torch.stack(ys), h


def chunk_backward(h, dt, u, B, C, A, A2, grad_y, adjoint):
    """Gradients of one chunk, given its start state h and `adjoint`, dL/dh at the chunk's
    end from everything after it. Recomputes the chunk's states, then runs the adjoint
    recurrence backwards. Returns the gradients of dt, u (T, batch, d_inner), B, C
    (T, batch, d_state), A (d_inner, d_state), and dL/dh before the chunk."""
    states = [h]
    for t in range(dt.shape[0]):
        states.append(
            torch.exp2(dt[t, :, :, None] * A2) * states[-1]
            + (dt[t] * u[t])[:, :, None] * B[t][:, None, :]
        )
    grad_dt, grad_u, grad_B, grad_C = [], [], [], []
    grad_A = torch.zeros_like(A)
    for t in reversed(range(dt.shape[0])):
        grad_C.append((grad_y[t][:, :, None] * states[t + 1]).sum(1))
        adjoint = adjoint + grad_y[t][:, :, None] * C[t][:, None, :]
        adjoint_B = (adjoint * B[t][:, None, :]).sum(-1)
        decay = torch.exp2(dt[t, :, :, None] * A2)
        through_decay = adjoint * states[t] * decay
        grad_dt.append(u[t] * adjoint_B + (through_decay * A).sum(-1))
        grad_u.append(dt[t] * adjoint_B)
        grad_B.append((adjoint * (dt[t] * u[t])[:, :, None]).sum(1))
        grad_A = grad_A + (through_decay * dt[t][:, :, None]).sum(0)
        adjoint = adjoint * decay
    return (
        torch.stack(grad_dt[::-1]), torch.stack(grad_u[::-1]), torch.stack(grad_B[::-1]),
        torch.stack(grad_C[::-1]), grad_A, adjoint,
    )


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, d_inner, length)),
        "A": (A, (d_inner, d_state)),
        "B": (B, (batch, d_state, length)),
        "C": (C, (batch, d_state, length)),
        "D": (D, (d_inner,)),
        "z": (z, (batch, d_inner, length)),
        "delta_bias": (delta_bias, (d_inner,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(
                f"selective_scan: {name} has shape {tuple(tensor.shape)}, expected {shape} "
                "(u, delta, z: (batch, d_inner, L); A: (d_inner, d_state); "
                "B, C: (batch, d_state, L); D, delta_bias: (d_inner,))"
            )
        if tensor is not None and tensor.is_complex():
            raise ValueError(f"selective_scan: {name} is complex; only real inputs are supported")
