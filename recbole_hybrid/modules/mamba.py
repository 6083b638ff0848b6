"""The Mamba block of mamba_ssm (v1 "simple" module), on any PyTorch device.

Same constructor arguments, parameter names, shapes and native initialisation as
`mamba_ssm.Mamba`, so state dicts move between the two both ways:

    in_proj   Linear(d_model -> 2 * d_inner, bias=bias)
    conv1d    depthwise Conv1d(d_inner, kernel d_conv, padding d_conv - 1, bias=conv_bias)
    x_proj    Linear(d_inner -> dt_rank + 2 * d_state, no bias)
    dt_proj   Linear(dt_rank -> d_inner, bias)
    A_log     (d_inner, d_state);  D (d_inner);  out_proj Linear(d_inner -> d_model, bias=bias)

with d_inner = expand * d_model and dt_rank = ceil(d_model / 16) by default. The
convolution and the selective scan go through `recbole_hybrid.ops`: on CUDA the mamba_ssm /
causal_conv1d kernels when they are installed, else Triton's; on CPU this package's C++
kernels (`impl`, a model's `mamba_impl`, forces one: see ops/backend.py).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_hybrid.ops import backend, causal_conv1d, selective_scan


class Mamba(nn.Module):
    def __init__(
        self,
        d_model,
        d_state=16,
        d_conv=4,
        expand=2,
        dt_rank="auto",
        dt_min=0.001,
        dt_max=0.1,
        dt_init="random",
        dt_scale=1.0,
        dt_init_floor=1e-4,
        conv_bias=True,
        bias=False,
        use_fast_path=True,
        layer_idx=None,
        device=None,
        dtype=None,
        impl=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"Mamba: {name} must be a positive integer, got {value!r}")
        if expand <= 0:
            raise ValueError(f"Mamba: expand must be positive, got {expand!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path  # kept for signature parity; the ops pick kernels
        self.layer_idx = layer_idx
        self.impl = backend.requested_impl(impl) if impl is not None else None

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding=d_conv - 1,
                                groups=self.d_inner, bias=conv_bias, **factory)
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, **factory))
        self.D = nn.Parameter(torch.empty(self.d_inner, **factory))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_init_args = {"dt_min": dt_min, "dt_max": dt_max, "dt_init": dt_init,
                             "dt_scale": dt_scale, "dt_init_floor": dt_init_floor}
        self.reset_ssm_parameters()

    def reset_parameters(self):
        """Mamba's native initialisation of every parameter, as at construction."""
        for layer in (self.in_proj, self.conv1d, self.x_proj, self.dt_proj, self.out_proj):
            layer.reset_parameters()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Mamba's native initialisation of dt_proj, A_log and D (S4D-real A = -(1..d_state));
        dt = softplus(dt_proj.bias) starts log-uniform in [dt_min, dt_max]."""
        dt_min, dt_max = self.dt_init_args["dt_min"], self.dt_init_args["dt_max"]
        std = self.dt_rank ** -0.5 * self.dt_init_args["dt_scale"]
        if self.dt_init_args["dt_init"] == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner, device=self.D.device) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=self.dt_init_args["dt_init_floor"])
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.dt_proj.bias._no_reinit = True
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.D.device)
        self.A_log.copy_(torch.log(states).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def forward(self, hidden_states):
        """(batch, L, d_model) -> (batch, L, d_model); position t sees positions <= t only."""
        # The ops take (batch, d_inner, L) tensors; here they are views of the Linear layers'
        # (batch, L, features) outputs, which the C++ and Triton kernels read in place and
        # answer in the same layout, so neither direction copies between layouts.
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = causal_conv1d(x.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                          self.activation, impl=self.impl)
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)),
                               [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in the softplus
        ssm = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
        y = selective_scan(
            x, delta, -torch.exp(self.A_log.to(ssm)), B.transpose(1, 2), C.transpose(1, 2),
            self.D.to(ssm), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.to(ssm),
            delta_softplus=True, impl=self.impl,
        )
        return self.out_proj(y.transpose(1, 2))
