"""The C++ selective scan for CPU tensors (csrc/selective_scan_cpu.cpp).

Built on first use by torch's extension builder (a C++ compiler and ninja are needed; about
a minute once, then cached under ~/.cache/torch_extensions). RECBOLE_HYBRID_CPU_KERNEL=0
turns it off. If the build fails, a warning is given once and the eager chunked scan is used.
"""

import os
import warnings

ENV_VAR = "RECBOLE_HYBRID_CPU_KERNEL"
SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "selective_scan_cpu.cpp")

_built = []  # [the extension module, or None after a failed build]


def load():
    """The extension module, or None when it is turned off or cannot be built."""
    if os.environ.get(ENV_VAR) == "0":
        return None
    if not _built:
        try:
            from torch.utils.cpp_extension import load as build

            _put_packaged_ninja_on_path()

            _built.append(build(
                name="recbole_hybrid_scan_cpu",
                sources=[SOURCE],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
            ))
        except Exception as error:  # compiler, ninja or linker failures have no common type
            warnings.warn(
                f"building the C++ selective scan failed ({type(error).__name__}: {error}); "
                f"using the slower PyTorch scan. Set {ENV_VAR}=0 to skip the build.",
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
