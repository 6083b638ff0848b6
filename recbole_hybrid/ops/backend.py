"""Which implementation runs a Mamba op on given tensors.

`impl` is one of
- "auto": on CUDA tensors the mamba_ssm / causal_conv1d kernels when installed, else the
  Triton kernels when triton imports, else this package's PyTorch path; on CPU tensors this
  package's C++ kernels (PyTorch where they cannot be built);
- "kernel": mamba_ssm's CUDA scan (the convolution still uses causal_conv1d only where it is
  installed, as mamba_ssm does, else what "auto" picks);
- "triton": the Triton kernels (CUDA tensors, or any tensor under TRITON_INTERPRET=1);
- "torch": this package's own path (C++ on CPU, PyTorch on CUDA).
An explicit `impl` other than "auto" (a model's `mamba_impl` config key) wins over the
environment variable RECBOLE_HYBRID_MAMBA_IMPL, which wins over "auto" (the models' default). Nothing here imports mamba_ssm,
causal_conv1d or triton until they are asked for; forcing one that cannot run here is a
ConfigError saying what to do. Where Triton cannot run on a card (older than compute
capability 7.0, or its kernel failed to compile or launch), "triton" becomes "native" with
one warning (`triton_fallback`); bfloat16 on a card without it is a ConfigError.
"""

import importlib
import os

import torch

from recbole_hybrid.errors import ConfigError
from recbole_hybrid.ops import triton_fallback

IMPLS = ("auto", "kernel", "torch", "triton")
ENV_VAR = "RECBOLE_HYBRID_MAMBA_IMPL"
SCAN_KERNEL, CONV_KERNEL = "mamba_ssm", "causal_conv1d"


def requested_impl(impl=None):
    """The implementation asked for: `impl` if given and not "auto", else the environment's,
    else "auto"."""
    forced = impl not in (None, "auto")
    chosen = impl if forced else os.environ.get(ENV_VAR) or "auto"
    if chosen not in IMPLS:
        source = "mamba_impl" if forced else ENV_VAR
        raise ConfigError(f"{source}={chosen!r}: choose one of {', '.join(IMPLS)}")
    return chosen


def check(impl, device):
    """ConfigError if `impl` ("kernel" or "triton"; the others always run) cannot run on
    `device` here: the package is missing, or the device is not CUDA."""
    device = torch.device(device)
    if impl == "kernel":
        if not kernel_available(SCAN_KERNEL):
            raise ConfigError(
                f"mamba_impl='kernel' needs the {SCAN_KERNEL} package, which is not importable "
                "here: install the CUDA kernels with `pip install .[cuda]` on a CUDA machine, or "
                "use mamba_impl='triton', 'torch' or 'auto'"
            )
        if device.type != "cuda":
            raise ConfigError(
                f"mamba_impl='kernel': the {SCAN_KERNEL} kernels run on CUDA tensors only, got "
                f"{device}; use mamba_impl='torch' (or 'auto') on this device"
            )
    if impl == "triton":
        if not kernel_available("triton"):
            raise ConfigError(
                "mamba_impl='triton' needs the triton package, which is not importable here: "
                "it comes with PyTorch's CUDA builds (or `pip install .[triton]`); or use "
                "mamba_impl='torch' or 'auto'"
            )
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                f"mamba_impl='triton': the Triton kernels run on CUDA tensors, got {device}; use "
                "mamba_impl='torch' (or 'auto') on this device, or set TRITON_INTERPRET=1 "
                "before starting Python to run them in Triton's (slow) interpreter"
            )


def scan_path(impl, tensor):
    """"kernel" (mamba_ssm), "triton", or "native" (this package's C++ / PyTorch scan) for
    a selective scan on `tensor`."""
    chosen = requested_impl(impl)
    triton_fallback.check_dtype(tensor)
    if chosen == "kernel":
        check(chosen, tensor.device)
        return "kernel"
    return _path(chosen, tensor, SCAN_KERNEL)


def conv_path(impl, tensor):
    """"kernel" (causal_conv1d), "triton" or "native" for a causal convolution on `tensor`;
    "kernel" forces only the scan, as in mamba_ssm."""
    chosen = requested_impl(impl)
    triton_fallback.check_dtype(tensor)
    return _path(chosen, tensor, CONV_KERNEL)


def _path(chosen, tensor, kernel_module):
    if chosen == "torch":
        return "native"
    if chosen == "triton":
        check(chosen, tensor.device)
        return "native" if triton_fallback.unfit(tensor) else "triton"
    if not tensor.is_cuda:
        return "native"
    if kernel_available(kernel_module):
        return "kernel"
    return "triton" if kernel_available("triton") and not triton_fallback.unfit(tensor) \
        else "native"


def kernel_available(module):
    """Whether `module` imports (checked once per module)."""
    if module not in _available:
        try:
            importlib.import_module(module)
            _available[module] = True
        except Exception:  # ImportError, or a CUDA/ABI mismatch raised at import
            _available[module] = False
    return _available[module]


_available = {}
