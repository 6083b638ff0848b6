"""Mamba's operations with mamba_ssm's interfaces: CUDA kernels when present, PyTorch otherwise."""

from recbole_hybrid.ops.causal_conv import causal_conv1d
from recbole_hybrid.ops.selective_scan import selective_scan

__all__ = ["causal_conv1d", "selective_scan"]
