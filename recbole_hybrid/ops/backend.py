"""Which implementation runs a Mamba op: mamba_ssm's CUDA kernels or this package's PyTorch.

`impl` is "auto" (kernels for CUDA tensors when installed, PyTorch otherwise), "kernel" or
"torch". An explicit `impl` (a model's `mamba_impl` config key) wins over the environment
variable RECBOLE_HYBRID_MAMBA_IMPL, which wins over "auto". Nothing here imports the kernels
until they are asked for.
"""

import importlib
import os

from recbole_hybrid.errors import ConfigError

IMPLS = ("auto", "kernel", "torch")
ENV_VAR = "RECBOLE_HYBRID_MAMBA_IMPL"


def requested_impl(impl=None):
    """The implementation asked for: `impl` if given, else the environment's, else "auto"."""
    chosen = impl or os.environ.get(ENV_VAR) or "auto"
    if chosen not in IMPLS:
        source = "mamba_impl" if impl else ENV_VAR
        raise ConfigError(f"{source}={chosen!r}: choose one of {', '.join(IMPLS)}")
    return chosen


def use_kernel(impl, tensor, module):
    """Whether to call `module` of the CUDA kernels (e.g. "mamba_ssm") for `tensor`."""
    chosen = requested_impl(impl)
    if chosen == "torch":
        return False
    available = kernel_available(module)
    if chosen == "kernel":
        if not available:
            raise RuntimeError(
                f"mamba_impl='kernel' needs the {module} package, which is not importable here: "
                "install the CUDA kernels with `pip install .[cuda]` on a CUDA machine, or use "
                "mamba_impl='torch' (or 'auto')"
            )
        if not tensor.is_cuda:
            raise RuntimeError(
                f"mamba_impl='kernel': the {module} kernels run on CUDA tensors only, got a "
                f"{tensor.device} tensor; use mamba_impl='torch' (or 'auto') on this device"
            )
        return True
    return available and tensor.is_cuda


def kernel_available(module):
    """Whether the kernel package imports (checked once per package)."""
    if module not in _available:
        try:
            importlib.import_module(module)
            _available[module] = True
        except Exception:  # ImportError, or a CUDA/ABI mismatch raised at import
            _available[module] = False
    return _available[module]


_available = {}
