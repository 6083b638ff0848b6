"""CUDA benchmark of the selective scan and of one Mamba block training step.

    python benchmarks/selective_scan_gpu.py [--repeats 20] [--shapes 2048x50,256x200,2048x200]
        [--states 16,32,64] [--dtypes float32,bfloat16] [--loops] [--block-shapes 2048x50,256x200]
        [--triton-configs 1024x16x4,512x8x4,...] [--triton-config TILExCHUNKxWARPS]

On a CUDA device, d_inner=128, with D, z, delta_bias and softplus (as the Mamba block calls
the scan; u, delta, B, C, z in the given dtype, A, D, delta_bias float32), for every shape,
d_state and dtype:
- mamba_ssm kernel: `recbole_hybrid.ops.selective_scan(impl="kernel")` (when installed);
- triton: the Triton scan, `impl="triton"`;
- torch: this package's PyTorch chunked scan, `impl="torch"`.
Times are medians of `--repeats` calls (a fifth of them for the torch path, which is slow)
after two warm-ups (which include Triton's compilation), with torch.cuda.synchronize()
around each; peak memory is torch.cuda.max_memory_allocated() during one forward+backward
above what was allocated before it. Parity: the largest relative difference (max |diff| /
max |reference|) over the output and every gradient, Triton against the torch path and the
kernel. `--loops` adds autograd-through-a-loop rows (scan_common.py) at d_state 32, float32.
Then one training step (forward, backward, Adam) of the Mamba block (d_model 64, d_state 32,
d_conv 4, expand 2) on each path, next to RecBole's 2-layer Transformer encoder (SASRec's,
hidden 64, 2 heads, inner 256) when RecBole is installed. `--triton-configs TILExCHUNKxWARPS,...`
first times the Triton scan with other block sizes (the tile of one program, triton_scan.CHUNK,
the warps) at d_state 32, float32, to choose the defaults (triton_scan.block_sizes);
`--triton-config` runs the tables with one such setting at every d_state instead of the
defaults. Needs only torch and triton.
"""

import argparse
import statistics
import sys
import time

import torch

from scan_common import D_INNER, import_without_recbole, lean_loop, make_inputs, reference

import_without_recbole()
from recbole_hybrid.modules import Mamba  # noqa: E402
from recbole_hybrid.ops import backend, selective_scan  # noqa: E402

DEVICE = "cuda"
OUTPUTS = ["out", "u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def scan_with(impl):
    def scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, impl=impl)

    return scan


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
    fn(*inputs).float().sum().backward()


def results(fn, inputs):
    """The output and every input's gradient for a fixed upstream gradient, in float32."""
    for tensor in inputs:
        tensor.grad = None
    out = fn(*inputs)
    out.backward(torch.ones_like(out))
    return [out.detach().float()] + [t.grad.float() for t in inputs]


def largest_difference(ours, theirs):
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, theirs))


def scan_rows(shapes, states, dtypes, repeats, implementations):
    print(f"\n## selective scan on {torch.cuda.get_device_name()}, d_inner={D_INNER}, D, z, "
          "delta_bias, softplus; ms, median")
    names = list(implementations)
    print("| B | L | d_state | dtype | " + " | ".join(f"{n} fwd | {n} fwd+bwd" for n in names)
          + " | torch / triton | triton / kernel | peak MiB " + " / ".join(names)
          + " | parity triton vs " + " / ".join(n for n in names if n != "triton") + " |")
    print("|" + " --- |" * (4 + 2 * len(names) + 4))
    for batch, length in shapes:
        for d_state in states:
            for dtype in dtypes:
                inputs = make_inputs(batch, length, DEVICE, d_state, dtype)
                fwd, both, peaks, outputs = {}, {}, {}, {}
                for name, fn in implementations.items():
                    reps = repeats if name != "torch" else max(3, repeats // 5)
                    with torch.no_grad():
                        fwd[name] = timed(lambda: fn(*inputs), reps)
                    both[name] = timed(lambda: forward_backward(fn, inputs), reps)
                    peaks[name] = peak_bytes(lambda: forward_backward(fn, inputs))
                    outputs[name] = results(fn, inputs)
                ratio_torch = both["torch"] / both["triton"]
                ratio_kernel = (f"{both['triton'] / both['kernel']:.2f}x"
                                if "kernel" in both else "n/a")
                parity = " / ".join(f"{largest_difference(outputs['triton'], outputs[n]):.1e}"
                                    for n in names if n != "triton")
                print(f"| {batch} | {length} | {d_state} | {str(dtype).replace('torch.', '')} | "
                      + " | ".join(f"{fwd[n] * 1e3:.2f} | {both[n] * 1e3:.2f}" for n in names)
                      + f" | {ratio_torch:.1f}x | {ratio_kernel} | "
                      + " / ".join(f"{peaks[n] / 2**20:.0f}" for n in names) + f" | {parity} |",
                      flush=True)
                inputs = outputs = None  # free them before the next shape
                torch.cuda.empty_cache()


def use_triton_blocks(tile, chunk, warps):
    """Make the Triton scan use these block sizes for every d_state."""
    from recbole_hybrid.ops import triton_scan

    triton_scan.block_sizes = lambda d_state: (tile, warps)
    triton_scan.CHUNK = chunk


def config_rows(shapes, configs, repeats):
    from recbole_hybrid.ops import triton_scan

    defaults = triton_scan.block_sizes, triton_scan.CHUNK
    print(f"\n## Triton scan block sizes, d_state 32, float32; ms, median (defaults at d_state 32: "
          f"TILE, NUM_WARPS = {triton_scan.block_sizes(32)}, CHUNK = {triton_scan.CHUNK})")
    print("| B | L | TILE | CHUNK | NUM_WARPS | fwd | fwd+bwd |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    scan = scan_with("triton")
    for batch, length in shapes:
        inputs = make_inputs(batch, length, DEVICE)
        for tile, chunk, warps in configs:
            use_triton_blocks(tile, chunk, warps)
            with torch.no_grad():
                fwd = timed(lambda: scan(*inputs), repeats)
            both = timed(lambda: forward_backward(scan, inputs), repeats)
            print(f"| {batch} | {length} | {tile} | {chunk} | {warps} | {fwd * 1e3:.2f} | "
                  f"{both * 1e3:.2f} |", flush=True)
    triton_scan.block_sizes, triton_scan.CHUNK = defaults


def loop_rows(shapes, repeats):
    print("\n## autograd through a loop over time, d_state 32, float32; ms, median")
    print("| B | L | reference fwd+bwd | lean loop fwd+bwd |")
    print("| --- | --- | --- | --- |")
    for batch, length in shapes:
        inputs = make_inputs(batch, length, DEVICE)
        reps = max(3, repeats // 5)
        times = [timed(lambda fn=fn: forward_backward(fn, inputs), reps)
                 for fn in (reference, lean_loop)]
        print(f"| {batch} | {length} | {times[0] * 1e3:.1f} | {times[1] * 1e3:.1f} |", flush=True)


def block_step_rows(shapes, repeats, impls):
    try:
        from recbole.model.layers import TransformerEncoder
    except ImportError:
        TransformerEncoder = None
    print("\n## one training step (forward, backward, Adam), d_model=64; ms, median")
    print("| B | L | module | ms | peak MiB |")
    print("| --- | --- | --- | --- | --- |")
    for batch, length in shapes:
        torch.manual_seed(0)
        x = torch.randn(batch, length, 64, device=DEVICE)
        steps = {}
        for impl in impls:
            block = Mamba(d_model=64, d_state=32, d_conv=4, expand=2, impl=impl).to(DEVICE)
            steps[f"Mamba block, {impl}"] = (block, lambda block=block: block(x))
        if TransformerEncoder is not None:
            causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=DEVICE))
            mask = torch.where(causal, 0.0, -10000.0)[None, None].expand(batch, 1, length, length)
            encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=64, inner_size=256,
                                         hidden_dropout_prob=0.2, attn_dropout_prob=0.2,
                                         hidden_act="gelu", layer_norm_eps=1e-12).to(DEVICE)
            steps["2-layer Transformer (SASRec)"] = (encoder, lambda: encoder(x, mask)[-1])
        for name, (module, run) in steps.items():
            optimizer = torch.optim.Adam(module.parameters(), 1e-3)

            def step():
                optimizer.zero_grad()
                run().square().mean().backward()
                optimizer.step()

            reps = repeats if "torch" not in name else max(3, repeats // 5)
            seconds = timed(step, reps)
            print(f"| {batch} | {length} | {name} | {seconds * 1e3:.2f} | "
                  f"{peak_bytes(step) / 2**20:.0f} |", flush=True)


def shape_list(text):
    return [tuple(int(v) for v in shape.split("x")) for shape in text.split(",")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", default="2048x50,256x200,2048x200", help="BATCHxL,...")
    parser.add_argument("--states", default="16,32,64")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--loops", action="store_true", help="add the autograd-loop rows")
    parser.add_argument("--block-shapes", default="2048x50,256x200", help="BATCHxL,... or none")
    parser.add_argument("--triton-configs", help="TILExCHUNKxNUM_WARPS,... to time first")
    parser.add_argument("--triton-config", help="TILExCHUNKxNUM_WARPS for the tables")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("selective_scan_gpu.py needs a CUDA device; on CPU run selective_scan_cpu.py")
    has_kernel = backend.kernel_available("mamba_ssm")
    has_triton = backend.kernel_available("triton")
    triton_version = __import__("triton").__version__ if has_triton else "NOT installed"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton_version}, "
          f"mamba_ssm {'installed' if has_kernel else 'NOT installed (kernel columns left out)'}")
    implementations = {}
    if has_kernel:
        implementations["kernel"] = scan_with("kernel")
    if has_triton:
        implementations["triton"] = scan_with("triton")
    implementations["torch"] = scan_with("torch")
    if has_triton and args.triton_configs:
        config_rows(shape_list("256x200,2048x50"), shape_list(args.triton_configs), args.repeats)
    if has_triton and args.triton_config:
        use_triton_blocks(*shape_list(args.triton_config)[0])
        print(f"Triton scan block sizes for what follows: TILE x CHUNK x NUM_WARPS = "
              f"{args.triton_config} at every d_state")
    if has_triton:
        scan_rows(shape_list(args.shapes), [int(n) for n in args.states.split(",")],
                  [getattr(torch, name) for name in args.dtypes.split(",")], args.repeats,
                  implementations)
    if args.loops:
        loop_rows(shape_list("2048x50,256x200"), args.repeats)
    if args.block_shapes != "none":
        block_step_rows(shape_list(args.block_shapes), args.repeats, list(implementations))


if __name__ == "__main__":
    main()
