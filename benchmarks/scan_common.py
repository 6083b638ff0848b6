"""What both selective-scan benchmarks share: the inputs and the two loop implementations.

- reference: the algorithm of mamba_ssm's `selective_scan_ref` (written anew here):
  exp(delta*A) and delta*B*u for all steps up front, a loop over time, autograd through it;
- lean loop: the same loop computing exp(delta_t*A) per step, autograd through it.
"""

import torch
import torch.nn.functional as F

D_INNER, D_STATE = 128, 32


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


def make_inputs(batch, length, device="cpu"):
    """The scan's inputs as the Mamba block makes them, leaves that require grad."""
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(batch, D_INNER, length, generator=g),  # u
        (torch.randn(batch, D_INNER, length, generator=g) * 0.5),  # delta
        (-torch.rand(D_INNER, D_STATE, generator=g) * 4 - 0.1),  # A
        torch.randn(batch, D_STATE, length, generator=g),  # B
        torch.randn(batch, D_STATE, length, generator=g),  # C
        torch.randn(D_INNER, generator=g),  # D
        torch.randn(batch, D_INNER, length, generator=g),  # z
        (torch.randn(D_INNER, generator=g) * 0.5),  # delta_bias
    ]
    return [t.to(device).requires_grad_() for t in tensors]
