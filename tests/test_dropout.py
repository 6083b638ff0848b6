"""The C++ dropout (ops/dropout.py): its mask against a step-by-step reference of the hash,
its statistics, its gradient, and where the models use it."""

import numpy as np
import pytest
import torch
from torch import nn

from recbole_hybrid.modules import Dropout
from recbole_hybrid.ops import cpp_extension
from recbole_hybrid.ops.dropout import CpuDropout, dropout

pytestmark = pytest.mark.skipif(cpp_extension.load() is None, reason="no C++ extension here")


U = np.uint64
LOW = U(0xFFFFFFFF)


def mix32(x):
    """lowbias32 on 32-bit values held in uint64 (products reduced mod 2^32)."""
    x = np.asarray(x, dtype=U) & LOW
    x ^= x >> U(16)
    x = (x * U(0x7FEB352D)) & LOW
    x ^= x >> U(15)
    x = (x * U(0x846CA68B)) & LOW
    return x ^ (x >> U(16))


def reference_mask(n, p, seed):
    """Element i kept iff mix(mix(i ^ key1) + key2) >= p * 2^32, i < 2^32 (the kernel's
    comment, one element at a time in 64-bit integers)."""
    seed_lo, seed_hi = seed & 0xFFFFFFFF, seed >> 32
    key1 = int(mix32(seed_lo ^ int(mix32(seed_hi))))  # hi = 0: the multiple of 0x9e3779b9 is 0
    key2 = int(mix32(key1 ^ 0x85EBCA6B))
    r = mix32((mix32(np.arange(n, dtype=U) ^ U(key1)) + U(key2)) & LOW)
    return torch.from_numpy(r >= int(p * 2 ** 32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [0.1, 0.4, 0.9])
def test_output_and_gradient_follow_the_reference_mask(dtype, p):
    seed = (0x5EADBEEF << 32) | 0x12345  # both halves of the seed used
    x = torch.randn(3, 50, 7, dtype=dtype, requires_grad=True)
    mask = reference_mask(x.numel(), p, seed).view(x.shape)
    out = CpuDropout.apply(x, p, seed)
    scale = 1.0 / (1 - p)  # kept elements times the scale, as the kernel does
    expected = torch.where(mask, x * torch.tensor(scale, dtype=dtype), torch.zeros((), dtype=dtype))
    assert torch.equal(out, expected)
    grad = torch.randn_like(x)
    out.backward(grad)
    assert torch.allclose(x.grad, grad * mask / (1 - p), rtol=1e-6, atol=0)
    # a non-contiguous input is read in its logical order
    xt = x.detach().transpose(0, 2)
    expected = CpuDropout.apply(xt.contiguous(), p, seed)
    assert torch.equal(CpuDropout.apply(xt, p, seed), expected)


def test_gradcheck_float64():
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CpuDropout.apply(t, 0.3, 77), (x,))


@pytest.mark.parametrize("p", [0.05, 0.4, 0.9])
def test_mask_statistics(p):
    n = 2_000_000
    ones = torch.ones(n)
    kept = [CpuDropout.apply(ones, p, seed) != 0 for seed in (1, 2)]
    sigma = (p * (1 - p) / n) ** 0.5
    for mask in kept:
        assert abs(mask.float().mean().item() - (1 - p)) < 5 * sigma
        both = (mask[1:] & mask[:-1]).float().mean().item()  # neighbours independent
        assert abs(both - (1 - p) ** 2) < 5 * sigma
        strided = (mask[64:] & mask[:-64]).float().mean().item()
        assert abs(strided - (1 - p) ** 2) < 5 * sigma
    agree = (kept[0] == kept[1]).float().mean().item()  # two seeds independent
    assert abs(agree - (p ** 2 + (1 - p) ** 2)) < 5 * sigma


def test_seed_comes_from_torchs_generator_and_eval_is_the_identity():
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    a, b = dropout(x, 0.4), dropout(x, 0.4)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.4), a) and not torch.equal(a, b)
    module = Dropout(0.4)
    assert isinstance(module, nn.Dropout) and module.p == 0.4
    assert module.eval()(x) is x
    assert Dropout(0.0)(x) is x
    half = dropout(x.bfloat16(), 0.5)  # other dtypes: torch's own dropout
    assert half.dtype == torch.bfloat16 and 0.3 < (half == 0).float().mean().item() < 0.7
    with pytest.raises(RuntimeError, match="p must be in"):
        cpp_extension.load().dropout(x, 1.0, 0)
