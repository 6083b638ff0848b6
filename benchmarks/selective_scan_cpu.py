"""CPU benchmark of the selective scan, and of one Mamba block training step.

    python benchmarks/selective_scan_cpu.py [--repeats 3] [--shapes 2048x50,256x200]

Compares, at d_inner=128, d_state=32, float32, with D, z, delta_bias and softplus (as the
Mamba block calls it):
- reference: the algorithm of mamba_ssm's `selective_scan_ref` (written anew here):
  exp(delta*A) and delta*B*u for all steps up front, a loop over time, autograd through it;
- lean loop: the same loop computing exp(delta_t*A) per step, autograd through it;
- recbole-hybrid: `recbole_hybrid.ops.selective_scan` (the C++ CPU scan when it builds);
- recbole-hybrid fallback: the same with the PyTorch chunked scan (RECBOLE_HYBRID_CPU_KERNEL=0).
Timings are medians over `--repeats` rounds; each round runs every implementation once, in
turn (forward alone with autograd recording, then forward+backward). The first call of each
is timed on its own line. Peak memory is the largest resident-set growth over the level just
before a forward+backward, sampled every millisecond from /proc/self/statm; the script
re-runs itself with MALLOC_MMAP_THRESHOLD_ fixed so freed tensors leave the resident set.
Then one training step (forward, backward, Adam) of a Mamba block (d_model=64, expand=2)
next to one step of a 2-layer SASRec-style Transformer encoder (RecBole's, hidden 64,
2 heads, inner 256, causal mask) on the same (batch, L, 64) input.
"""

import argparse
import os
import statistics
import sys
import threading
import time

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

from recbole_hybrid.modules import Mamba  # noqa: E402
from recbole_hybrid.ops import cpp_extension, selective_scan  # noqa: E402
from scan_common import D_INNER, D_STATE, lean_loop, make_inputs, reference  # noqa: E402

def ours(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)


def ours_fallback(*args):
    previous = os.environ.get(cpp_extension.ENV_VAR)
    os.environ[cpp_extension.ENV_VAR] = "0"
    try:
        return ours(*args)
    finally:
        if previous is None:
            del os.environ[cpp_extension.ENV_VAR]
        else:
            os.environ[cpp_extension.ENV_VAR] = previous


IMPLEMENTATIONS = {
    "reference (selective_scan_ref)": reference,
    "lean loop": lean_loop,
    "recbole-hybrid": ours,
    "recbole-hybrid fallback (PyTorch)": ours_fallback,
}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_peak(fn):
    """(seconds, peak resident-set growth in bytes) of fn()."""
    baseline, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, max(0, max(peak[0], rss_bytes()) - baseline)


def forward_backward(fn, inputs):
    for tensor in inputs:
        tensor.grad = None
    fn(*inputs).sum().backward()


def forward_only(fn, inputs):
    start = time.perf_counter()
    fn(*inputs)
    return time.perf_counter() - start


def scan_table(batch, length, repeats):
    inputs = make_inputs(batch, length)
    print(f"\n## selective scan, B={batch}, L={length}, d_inner={D_INNER}, d_state={D_STATE}, "
          f"float32, {torch.get_num_threads()} threads")
    first = {}
    for name, fn in IMPLEMENTATIONS.items():
        start = time.perf_counter()
        forward_backward(fn, inputs)
        first[name] = time.perf_counter() - start
    print("first call (forward+backward, warm-up): "
          + "; ".join(f"{name} {seconds:.2f} s" for name, seconds in first.items()))
    times = {name: {"forward": [], "forward+backward": [], "peak": []} for name in IMPLEMENTATIONS}
    for _ in range(repeats):
        for name, fn in IMPLEMENTATIONS.items():
            times[name]["forward"].append(forward_only(fn, inputs))
            seconds, peak = measure_peak(lambda: forward_backward(fn, inputs))
            times[name]["forward+backward"].append(seconds)
            times[name]["peak"].append(peak)
    ours_fb = statistics.median(times["recbole-hybrid"]["forward+backward"])
    ours_peak = statistics.median(times["recbole-hybrid"]["peak"])
    print("| implementation | forward s | forward+backward s | peak memory GiB | "
          "fwd+bwd time / recbole-hybrid | peak / recbole-hybrid |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in times.items():
        fb, peak = statistics.median(t["forward+backward"]), statistics.median(t["peak"])
        print(f"| {name} | {statistics.median(t['forward']):.3f} | {fb:.3f} | "
              f"{peak / 2**30:.2f} | {fb / ours_fb:.1f}x | "
              + (f"{peak / ours_peak:.1f}x |" if ours_peak >= 2**20 else "n/a (ours < 1 MiB) |"))


def block_step_table(batch, length, repeats):
    from recbole.model.layers import TransformerEncoder

    torch.manual_seed(0)
    x = torch.randn(batch, length, 64)
    mamba = Mamba(d_model=64, d_state=D_STATE, d_conv=4, expand=2)
    encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=64, inner_size=256,
                                 hidden_dropout_prob=0.2, attn_dropout_prob=0.2,
                                 hidden_act="gelu", layer_norm_eps=1e-12)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    mask = torch.where(causal, 0.0, -10000.0)[None, None].expand(batch, 1, length, length)
    steps = {
        "Mamba block": (mamba, lambda: mamba(x)),
        "2-layer Transformer (SASRec)": (encoder, lambda: encoder(x, mask)[-1]),
    }
    optimizers = {name: torch.optim.Adam(model.parameters(), 1e-3) for name, (model, _) in steps.items()}

    def train_step(name):
        model, run = steps[name]
        optimizers[name].zero_grad()
        run().square().mean().backward()
        optimizers[name].step()

    for name in steps:  # warm-up
        train_step(name)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name in steps:
            start = time.perf_counter()
            train_step(name)
            times[name].append(time.perf_counter() - start)
    mamba_s = statistics.median(times["Mamba block"])
    transformer_s = statistics.median(times["2-layer Transformer (SASRec)"])
    print(f"\n## one training step, (batch={batch}, L={length}, d_model=64)")
    print(f"Mamba block (d_state={D_STATE}, d_conv=4, expand=2): {mamba_s:.3f} s; "
          f"2-layer Transformer encoder (2 heads, inner 256): {transformer_s:.3f} s; "
          f"Mamba / Transformer = {mamba_s / transformer_s:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="2048x50,256x200", help="BATCHxL,...")
    args = parser.parse_args()
    start = time.perf_counter()
    built = cpp_extension.load() is not None
    print(f"C++ CPU scan {'loaded' if built else 'NOT available'} in "
          f"{time.perf_counter() - start:.1f} s (a first build takes about a minute, then cached)")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, MALLOC_MMAP_THRESHOLD_="
          f"{os.environ['MALLOC_MMAP_THRESHOLD_']}")
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    for batch, length in shapes:
        scan_table(batch, length, args.repeats)
    for batch, length in shapes:
        block_step_table(batch, length, args.repeats)


if __name__ == "__main__":
    main()
