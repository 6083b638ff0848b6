"""The C++ kernels for CPU tensors (csrc/mamba_cpu.cpp): the selective scan and the causal
depthwise convolution, forward and backward, and dropout (ops/dropout.py).

Built on first use by torch's extension builder (a C++ compiler and ninja are needed; about
a minute once, then cached under ~/.cache/torch_extensions). RECBOLE_HYBRID_CPU_KERNEL=0
turns it off. If the build fails, a warning is given once and the PyTorch implementations
are used (the chunked scan, F.conv1d, F.dropout).
"""

import hashlib
import os
import platform
import warnings

ENV_VAR = "RECBOLE_HYBRID_CPU_KERNEL"
SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "mamba_cpu.cpp")
# -fno-trapping-math lets GCC vectorize loops with selects (the scan's exp2, clamps); it
# changes no result. -fassociative-math (with -fno-signed-zeros, which it needs) lets the
# scan's sums over d_state end in a tree of vector additions instead of a chain of scalar
# ones, the longest step of each time step: the order of additions changes (a rounding
# difference), nothing else does (no -ffast-math: no finite-math or reciprocal shortcuts).
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-fopenmp"]

_built = []  # [the extension module, or None after a failed build]


def _cpu_tag():
    """A short tag of this CPU's instruction sets: a -march=native build from a cache shared
    between machines (a home folder on NFS) must not run on another CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha1((platform.machine() + flags).encode()).hexdigest()[:8]


def load():
    """The extension module, or None when it is turned off or cannot be built."""
    if os.environ.get(ENV_VAR) == "0":
        return None
    if not _built:
        try:
            from torch.utils.cpp_extension import load as build

            _put_packaged_ninja_on_path()

            _built.append(build(
                name=f"recbole_hybrid_mamba_cpu_{_cpu_tag()}",
                sources=[SOURCE],
                extra_cflags=FLAGS,
                extra_ldflags=["-fopenmp"],
            ))
        except Exception as error:  # compiler, ninja or linker failures have no common type
            warnings.warn(
                f"building the C++ CPU kernels failed ({type(error).__name__}: {error}); "
                f"using the slower PyTorch scan, convolution and dropout. Set {ENV_VAR}=0 to skip "
                "the build.",
                RuntimeWarning,
            )
            _built.append(None)
    return _built[0]


def _put_packaged_ninja_on_path():
    """torch's builder runs `ninja` from PATH; an unactivated virtual environment does not
    have the one the `ninja` package installed there."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
