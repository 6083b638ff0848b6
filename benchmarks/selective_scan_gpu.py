"""CUDA benchmark of the selective scan and of one Mamba block training step.

    python benchmarks/selective_scan_gpu.py [--repeats 20] [--shapes 2048x50,256x200]

On a CUDA device, float32, d_inner=128, d_state=32, with D, z, delta_bias and softplus:
- reference and lean loop (scan_common.py), autograd through a loop over time;
- mamba_ssm kernel: `mamba_ssm.selective_scan_fn` (when mamba_ssm is installed);
- recbole-hybrid torch: `recbole_hybrid.ops.selective_scan(impl="torch")`, the PyTorch
  chunked scan that runs on CUDA without mamba_ssm.
Times are medians of `--repeats` calls after two warm-ups, with torch.cuda.synchronize()
around each; peak memory is torch.cuda.max_memory_allocated() during one forward+backward
above what was allocated before it. The parity line gives the largest relative difference of
the output and each gradient between the torch path and the kernel. Then one training step
(forward, backward, Adam) of the Mamba block on each path next to RecBole's 2-layer
Transformer encoder (SASRec's, hidden 64, 2 heads, inner 256) on a (batch, L, 64) input.
"""

import argparse
import statistics
import sys
import time

import torch
from recbole.model.layers import TransformerEncoder

from recbole_hybrid.modules import Mamba
from recbole_hybrid.ops import backend, selective_scan
from scan_common import D_STATE, lean_loop, make_inputs, reference

DEVICE = "cuda"


def kernel(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, impl="kernel")


def torch_path(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, impl="torch")


def timed(fn, repeats):
    """Median seconds of fn() over `repeats` calls after two warm-ups."""
    for _ in range(2):
        fn()
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def peak_bytes(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def forward_backward(fn, inputs):
    for tensor in inputs:
        tensor.grad = None
    fn(*inputs).sum().backward()


def parity(inputs):
    """Largest relative difference, torch path vs kernel, of the output and every gradient."""
    results = []
    for fn in (torch_path, kernel):
        for tensor in inputs:
            tensor.grad = None
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        results.append([out.detach()] + [t.grad.clone() for t in inputs])
    names = ["out", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    return {name: ((a - b).abs().max() / b.abs().max()).item()
            for name, a, b in zip(names, *results)}


def scan_table(batch, length, repeats, implementations):
    inputs = make_inputs(batch, length, DEVICE)
    print(f"\n## selective scan on {torch.cuda.get_device_name()}, B={batch}, L={length}, float32")
    print("| implementation | forward ms | forward+backward ms | peak MiB |")
    print("| --- | --- | --- | --- |")
    for name, fn in implementations.items():
        reps = repeats if "loop" not in name and "reference" not in name else max(3, repeats // 5)
        with torch.no_grad():
            forward = timed(lambda: fn(*inputs), reps)
        both = timed(lambda: forward_backward(fn, inputs), reps)
        peak = peak_bytes(lambda: forward_backward(fn, inputs))
        print(f"| {name} | {forward * 1e3:.2f} | {both * 1e3:.2f} | {peak / 2**20:.0f} |")
    if "mamba_ssm kernel" in implementations:
        diffs = parity(inputs)
        print("parity, torch path vs kernel (max |diff| / max |kernel|): "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


def block_step_table(batch, length, repeats, impls):
    torch.manual_seed(0)
    x = torch.randn(batch, length, 64, device=DEVICE)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=DEVICE))
    mask = torch.where(causal, 0.0, -10000.0)[None, None].expand(batch, 1, length, length)
    encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=64, inner_size=256,
                                 hidden_dropout_prob=0.2, attn_dropout_prob=0.2,
                                 hidden_act="gelu", layer_norm_eps=1e-12).to(DEVICE)
    steps = {"2-layer Transformer (SASRec)": (encoder, lambda: encoder(x, mask)[-1])}
    for impl in impls:
        block = Mamba(d_model=64, d_state=D_STATE, d_conv=4, expand=2, impl=impl).to(DEVICE)
        steps[f"Mamba block, {impl}"] = (block, lambda block=block: block(x))
    print(f"\n## one training step (forward, backward, Adam), batch={batch}, L={length}, d_model=64")
    print("| module | ms | peak MiB |")
    print("| --- | --- | --- |")
    for name, (module, run) in steps.items():
        optimizer = torch.optim.Adam(module.parameters(), 1e-3)

        def step():
            optimizer.zero_grad()
            run().square().mean().backward()
            optimizer.step()

        seconds = timed(step, repeats)
        print(f"| {name} | {seconds * 1e3:.2f} | {peak_bytes(step) / 2**20:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", default="2048x50,256x200", help="BATCHxL,...")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("selective_scan_gpu.py needs a CUDA device; on CPU run selective_scan_cpu.py")
    has_kernel = backend.kernel_available("mamba_ssm")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, mamba_ssm "
          + ("installed" if has_kernel else "NOT installed (kernel rows left out)"))
    implementations = {"reference (selective_scan_ref)": reference, "lean loop": lean_loop}
    if has_kernel:
        implementations["mamba_ssm kernel"] = kernel
    implementations["recbole-hybrid torch"] = torch_path
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    for batch, length in shapes:
        scan_table(batch, length, args.repeats, implementations)
    impls = ["kernel", "torch"] if has_kernel else ["torch"]
    for batch, length in shapes:
        block_step_table(batch, length, args.repeats, impls)


if __name__ == "__main__":
    main()
