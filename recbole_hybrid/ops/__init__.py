"""Mamba's operations with mamba_ssm's interfaces: its CUDA kernels when installed, else
Triton kernels on CUDA and C++ kernels on CPU, PyTorch where neither can run (backend.py)."""

from recbole_hybrid.ops.causal_conv import causal_conv1d
from recbole_hybrid.ops.selective_scan import selective_scan

__all__ = ["causal_conv1d", "selective_scan"]
