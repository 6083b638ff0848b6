"""When the Triton kernels cannot run: the route to this package's own path instead.

Triton compiles for CUDA compute capability 7.0 and above (Volta, e.g. a V100, without
bfloat16; 8.0 and above fully). On an older card the dispatch (`backend`) never tries it; a
kernel that cannot be compiled (an old Triton) or launched (too little shared memory or
registers on the card) makes the op run on the native path (C++ / PyTorch) instead, its
backward recomputing the gradients there, and every later call of the process go there
directly. Either way one warning names the reason and the route, once per process. bfloat16
on a card without it is a ConfigError that advises float16, before any kernel runs.
"""

import functools
import warnings

import torch

from recbole_hybrid.errors import ConfigError

MIN_CAPABILITY = (7, 0)  # Triton's oldest target
BF16_CAPABILITY = (8, 0)  # the first with bfloat16 arithmetic
ROUTE = "this package's own path (PyTorch on CUDA, C++ on CPU)"
_failed = {}  # {"reason": ...} once Triton failed in this process


def unfit(tensor):
    """Why the Triton kernels will not run for `tensor` (its card is too old, or they failed
    earlier in this process), or None; warns once where it is the first time."""
    if "reason" in _failed:
        return _failed["reason"]
    if tensor.is_cuda:
        reason = capability_reason(*_card(tensor.get_device()))
        if reason:
            _give_up(reason)
            return reason
    return None


@functools.lru_cache(maxsize=None)
def _card(index):
    """(compute capability, name) of CUDA device `index`, asked once: the ops ask every step."""
    return torch.cuda.get_device_capability(index), torch.cuda.get_device_name(index)


def capability_reason(capability, name):
    """The reason a card of `capability` cannot run Triton, or None."""
    if tuple(capability) >= MIN_CAPABILITY:
        return None
    return (f"{name} has compute capability {capability[0]}.{capability[1]}, and Triton compiles "
            f"for {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} and above")


def check_dtype(tensor):
    """ConfigError for bfloat16 on a CUDA card without it."""
    if tensor.is_cuda and tensor.dtype == torch.bfloat16:
        check_bfloat16(*_card(tensor.get_device()))


def check_bfloat16(capability, name):
    if tuple(capability) < BF16_CAPABILITY:
        raise ConfigError(
            f"bfloat16 on {name} (compute capability {capability[0]}.{capability[1]}), which has "
            "no bfloat16 arithmetic (it starts at 8.0, e.g. an A100): use float16 instead. "
            "RecBole's enable_amp autocasts to float16 on CUDA; keep the model in float32")


def run(triton_call, native_call):
    """`triton_call()`, or where Triton cannot compile or launch its kernel, `native_call()`
    after one warning; every other error propagates."""
    try:
        return triton_call()
    except Exception as error:
        if not is_triton_failure(error):
            raise
        _give_up(f"its kernel failed to compile or launch ({type(error).__name__}: "
                 f"{str(error).strip()[:300]})")
    return native_call()


def is_triton_failure(error):
    """Whether `error` comes from Triton's compiler or launcher."""
    module = type(error).__module__ or ""
    return module.split(".")[0] == "triton" or "triton" in str(error).lower()


def native_grads(function, inputs, grad_outputs):
    """The gradients of `function(*inputs)` (a tuple of tensors) for each input that is a
    floating tensor (None for the others), recomputed with autograd on the native path."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() if _differentiable(x) else x for x in inputs]
        outputs = function(*leaves)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
        wrt = [x for x in leaves if _differentiable(x)]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                         allow_unused=True))
    return tuple(next(grads) if _differentiable(x) else None for x in inputs)


def _differentiable(x):
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _give_up(reason):
    if "reason" in _failed:  # a second op failing in the same step: warned already
        return
    _failed["reason"] = reason
    warnings.warn(f"the Triton kernels cannot run here: {reason}. The Mamba ops take {ROUTE} "
                  "from now on in this process (slower, same results); mamba_impl='torch' "
                  "chooses it from the start", RuntimeWarning, stacklevel=3)
