"""What the selective-scan benchmarks share: the inputs, the two loop implementations, and
importing the package where RecBole is not installed.

- reference: the algorithm of mamba_ssm's `selective_scan_ref` (written anew here):
  exp(delta*A) and delta*B*u for all steps up front, a loop over time, autograd through it;
- lean loop: the same loop computing exp(delta_t*A) per step, autograd through it.
"""

import os
import sys
import types

import torch
import torch.nn.functional as F

D_INNER, D_STATE = 128, 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_without_recbole():
    """Let `import recbole_hybrid.ops` (and `.modules`) work where RecBole is missing, e.g. a
    GPU machine with only torch and triton: the package is registered without running its
    __init__, which imports RecBole; the ops and the Mamba block need only torch."""
    try:
        import recbole  # noqa: F401
    except ImportError:
        package = types.ModuleType("recbole_hybrid")
        package.__path__ = [os.path.join(REPO, "recbole_hybrid")]
        sys.modules.setdefault("recbole_hybrid", package)


def reference(u, delta, A, B, C, D, z, delta_bias):
    delta = F.softplus(delta + delta_bias[:, None])
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    inputs = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + inputs[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def lean_loop(u, delta, A, B, C, D, z, delta_bias):
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * u[:, :, t, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def make_inputs(batch, length, device="cpu", d_state=D_STATE, dtype=torch.float32):
    """The scan's inputs as the Mamba block makes them, leaves that require grad: u, delta,
    B, C, z in `dtype`, A, D, delta_bias in float32 (the block's parameters)."""
    g = torch.Generator().manual_seed(0)
    tensors = [
        (torch.randn(batch, D_INNER, length, generator=g), dtype),  # u
        (torch.randn(batch, D_INNER, length, generator=g) * 0.5, dtype),  # delta
        (-torch.rand(D_INNER, d_state, generator=g) * 4 - 0.1, torch.float32),  # A
        (torch.randn(batch, d_state, length, generator=g), dtype),  # B
        (torch.randn(batch, d_state, length, generator=g), dtype),  # C
        (torch.randn(D_INNER, generator=g), torch.float32),  # D
        (torch.randn(batch, D_INNER, length, generator=g), dtype),  # z
        (torch.randn(D_INNER, generator=g) * 0.5, torch.float32),  # delta_bias
    ]
    return [t.to(device, kind).requires_grad_() for t, kind in tensors]
