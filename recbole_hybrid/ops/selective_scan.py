"""The selective scan of Mamba, with the interface of mamba_ssm's `selective_scan_fn`.

    delta = softplus(delta + delta_bias)            (each step optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,       h_0 = 0
    y_t   = <h_t, C_t> + D * u_t
    out_t = y_t * silu(z_t)                         (when z is given)

Shapes: u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L);
D, delta_bias (d_inner,); the last state is (batch, d_inner, d_state). Real-valued only;
any strides (the Mamba block passes views of its Linear layers' (batch, L, features)
outputs, which the C++ and Triton scans read in place).

Which implementation runs (backend.scan_path): mamba_ssm's CUDA kernel, the Triton scan
(triton_scan.py), or `SelectiveScan`, which computes the same function exactly, with the
gradients of every input from the adjoint recurrence run in reverse, by one of two cores:
- `CppCore`, CPU tensors: the C++ scan (ops/cpp_extension.py), one (batch row, channel)
  at a time with its state in a small buffer; backward recomputes the states.
- `ChunkedCore`, any device, and the fallback: PyTorch over chunks of CHUNK_LEN steps,
  keeping only the state at each chunk start and recomputing a chunk's states in backward.
Decays are exp2(delta * A * log2(e)): with delta >= 0 (softplus, as Mamba calls it) and
A < 0 only exponentials of non-positive numbers; half-precision inputs are accumulated in
float32.
"""

import math

import torch
import torch.nn.functional as F

from recbole_hybrid.ops import backend, cpp_extension, triton_fallback

CHUNK_LEN = 10
LOG2_E = math.log2(math.e)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, *, impl=None,
):
    """`out` (batch, d_inner, L), and the last state too when `return_last_state`."""
    path = backend.scan_path(impl, u)
    if path == "kernel":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    inputs = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if path == "triton":
        from recbole_hybrid.ops import triton_scan

        out, last_state = triton_fallback.run(
            lambda: triton_scan.selective_scan(*inputs, native=SelectiveScan.apply),
            lambda: SelectiveScan.apply(*inputs))
    else:
        out, last_state = SelectiveScan.apply(*inputs)
    return (out, last_state) if return_last_state else out


class SelectiveScan(torch.autograd.Function):
    """Casts to the compute precision and hands the whole op to a core."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        ctx.core = CppCore if CppCore.serves(u) else ChunkedCore
        ctx.delta_softplus = delta_softplus
        out, last_state, saved = ctx.core.forward(_ScanInputs(u, delta, A, B, C, D, z, delta_bias),
                                                  delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *saved)
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx, grad_out, grad_last_state):
        originals, saved = ctx.saved_tensors[:8], ctx.saved_tensors[8:]
        x = _ScanInputs(*originals)
        if grad_last_state is not None:
            grad_last_state = grad_last_state.to(x.dtype)
        grads = ctx.core.backward(x, ctx.delta_softplus, saved, grad_out.to(x.dtype), grad_last_state)
        return tuple(
            grad.to(original.dtype) if grad is not None else None
            for grad, original in zip(grads, originals)
        ) + (None,)


class _ScanInputs:
    """The inputs in compute precision: float64 stays, anything else becomes float32.
    A2 = A * log2(e), for the decays exp2(dt * A2)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias):
        self.dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        self.u, self.delta, self.A, self.B, self.C, self.D, self.z, self.delta_bias = (
            t.to(self.dtype) if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)
        )
        self.A2 = self.A * LOG2_E


class CppCore:
    """The C++ scan on CPU tensors, softplus and gate included; it reads u, delta and z in
    any layout, so nothing is copied. Backward recomputes from the inputs."""

    @staticmethod
    def serves(tensor):
        return tensor.device.type == "cpu" and cpp_extension.load() is not None

    @staticmethod
    def _arguments(x, delta_softplus):
        return (x.u, x.delta, x.A.contiguous(), _states_contiguous(x.B), _states_contiguous(x.C),
                _contiguous(x.D), x.z, _contiguous(x.delta_bias), delta_softplus)

    @staticmethod
    def forward(x, delta_softplus):
        out, last_state = cpp_extension.load().scan_forward(*CppCore._arguments(x, delta_softplus))
        return out, last_state, ()

    @staticmethod
    def backward(x, delta_softplus, saved, grad_out, grad_last_state):
        return cpp_extension.load().scan_backward(
            *CppCore._arguments(x, delta_softplus), grad_out, grad_last_state
        )


def _states_contiguous(tensor):
    """B or C (batch, d_state, L) with unit d_state stride, as the C++ scan reads them."""
    return tensor if tensor.stride(1) == 1 else tensor.transpose(1, 2).contiguous().transpose(1, 2)


def _contiguous(tensor):
    return tensor.contiguous() if tensor is not None else None


class ChunkedCore:
    """PyTorch over chunks of CHUNK_LEN steps; keeps the state at each chunk start."""

    @staticmethod
    def forward(x, delta_softplus):
        _, dt = _steps(x, delta_softplus)
        dt, u, B, C = _time_major(dt, x.u, x.B, x.C)
        y = dt.new_empty(dt.shape)  # (L, batch, d_inner)
        h = dt.new_zeros(*dt.shape[1:], x.A.shape[1])
        starts = []
        for s, e in _chunks(dt.shape[0]):
            starts.append(h)
            y[s:e], h = chunk_forward(h, dt[s:e], u[s:e], B[s:e], C[s:e], x.A2)
        y = y.permute(1, 2, 0)
        if x.D is not None:
            y = y + x.D[:, None] * x.u
        out = y * F.silu(x.z) if x.z is not None else y
        return out, h, (torch.stack(starts), y)

    @staticmethod
    def backward(x, delta_softplus, saved, grad_out, grad_last_state):
        starts, y = saved
        grad_z = None
        if x.z is not None:
            gate = torch.sigmoid(x.z)
            grad_z = grad_out * y * gate * (1 + x.z * (1 - gate))
            grad_y = grad_out * x.z * gate
        else:
            grad_y = grad_out
        raw, dt = _steps(x, delta_softplus)
        dt, u, B, C, grad_y_t = _time_major(dt, x.u, x.B, x.C, grad_y)
        grad_dt, grad_u = torch.empty_like(dt), torch.empty_like(dt)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(x.A)
        adjoint = grad_last_state.clone() if grad_last_state is not None else torch.zeros_like(starts[0])
        for k, (s, e) in reversed(list(enumerate(_chunks(dt.shape[0])))):
            grad_dt[s:e], grad_u[s:e], grad_B[s:e], grad_C[s:e], chunk_A, adjoint = chunk_backward(
                starts[k], dt[s:e], u[s:e], B[s:e], C[s:e], x.A, x.A2, grad_y_t[s:e], adjoint
            )
            grad_A += chunk_A
        grad_u = grad_u.permute(1, 2, 0)
        grad_D = None
        if x.D is not None:
            grad_u = grad_u + grad_y * x.D[:, None]
            grad_D = (grad_y * x.u).sum((0, 2))
        grad_delta = grad_dt.permute(1, 2, 0)
        if delta_softplus:
            grad_delta = grad_delta * torch.sigmoid(raw)
        grad_bias = grad_delta.sum((0, 2)) if x.delta_bias is not None else None
        return (grad_u, grad_delta, grad_A, grad_B.permute(1, 2, 0), grad_C.permute(1, 2, 0),
                grad_D, grad_z, grad_bias)


def _steps(x, delta_softplus):
    """delta + bias, and dt = its softplus when asked for."""
    raw = x.delta + x.delta_bias[:, None] if x.delta_bias is not None else x.delta
    return raw, F.softplus(raw) if delta_softplus else raw


def _time_major(*tensors):
    """(batch, channels, L) -> (L, batch, channels), contiguous."""
    return tuple(t.permute(2, 0, 1).contiguous() for t in tensors)


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
