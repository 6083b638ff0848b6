"""Training-step time and peak memory against the sequence length, tokens per batch held fixed.

    python benchmarks/length_scaling.py [--device cpu|cuda] [--amp] [--tokens N] [--steps S]
        [--lengths 50,100,200,500,1000,2000] [--models SASRec,LightSANs,Mamba4Rec,MaTrRec,MLSA4Rec]
        [--items 3416] [--config KEY=VALUE ...] [--out FOLDER]

Each point (model, length L) runs in a process of its own: build the model with its package
defaults (RecBole's yaml for SASRec and LightSANs, ours for the three Mamba models; hidden 64,
CE loss over --items items) and MAX_ITEM_LIST_LENGTH = L, a batch of B = --tokens // L random
sequences of full length, then one warm-up step and --steps timed training steps (forward,
loss, backward, Adam step). --config KEY=VALUE (YAML value, repeatable) sets a key for every
model, e.g. `--config n_layers=1 --config num_layers=1` for one layer each (RecBole ignores a
key a model does not read). Reported per point: the median step time, and the peak memory of
the timed steps above what the process held between steps (model, batch, gradients and Adam's
state, all allocated by the warm-up step):
- on CPU the resident set's high-water mark (Linux: /proc/self/status VmHWM, reset through
  /proc/self/clear_refs after the warm-up step and glibc's malloc_trim, so that memory freed
  by the warm-up step is not counted as held) minus the resident set at that reset;
- on CUDA the allocator's peak (torch.cuda.max_memory_allocated, reset after the warm-up
  step) minus what was allocated at that reset.
Both are measured, never estimated. lengths.csv also has held_mb, the memory at the reset
(on CPU the whole process, interpreter and libraries included).

At a fixed number of tokens a model whose cost per sequence grows linearly in L takes the
same time at every L (slope 0 on the log-log plot) and attention's quadratic term shows as
slope 1; the slopes fitted from 200 to 2000 (least squares on log-log) are printed, and the
exponent per sequence is 1 + slope. "Cheaper than SASRec from" is the shortest length from
which on every longer measured length the model's time (memory) is below SASRec's.

Writes FOLDER/lengths.md, lengths.csv (rewritten after every point, so an interrupted run
keeps what it measured) and lengths.png. FOLDER defaults to
length_scaling/<device>[-amp][-N] beside the current folder, the first free name.
--amp: float16 autocast with a GradScaler on CUDA, bfloat16 autocast on CPU.
Duration with the defaults on 2 CPU cores: about 10 minutes (--tokens 32768, --steps 5).
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("SASRec", "LightSANs", "Mamba4Rec", "MaTrRec", "MLSA4Rec")
LENGTHS = (50, 100, 200, 500, 1000, 2000)
TAG = "@@ "  # the worker's result line; anything else it prints is passed through
COLUMNS = ("model", "length", "batch", "tokens", "seconds", "peak_mb", "held_mb", "parameters",
           "loss", "error")


def run_point(model_name, length, batch, items, steps, device, amp, config):
    """Worker side: one model at one length; returns the measurements as a dict."""
    import torch

    from step_common import training_setup

    model, optimizer, interaction = training_setup(model_name, batch, length, items, device,
                                                   {"loss_type": "CE", **config})
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")

    def step():
        optimizer.zero_grad()
        with torch.autocast(device, dtype=amp_dtype, enabled=amp):
            loss = model.calculate_loss(interaction)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    loss = step().item()  # warm-up: allocates gradients and Adam's state
    memory = Memory(device)
    seconds = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds), "peak_mb": memory.peak_mb(),
            "held_mb": memory.base / 2 ** 20, "loss": loss,
            "parameters": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads()}


class Memory:
    """The peak memory from construction on, above what was held at construction (MB)."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        if device == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            import ctypes
            import gc

            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the system
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
            self.base = self._status("VmRSS")

    def peak_mb(self):
        if self.device == "cuda":
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2 ** 20
        return (self._status("VmHWM") - self.base) / 2 ** 20

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # kB
        raise RuntimeError(f"/proc/self/status has no {key}")


def overrides(pairs):
    """{key: value} from KEY=VALUE strings, each value read as YAML (as RecBole reads it)."""
    import yaml

    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            print(f"length_scaling: --config {pair!r} is not KEY=VALUE; write e.g. "
                  "--config n_layers=1", file=sys.stderr)
            sys.exit(2)
        config[key.strip()] = yaml.safe_load(value)
    return config


def measure(model, length, args):
    """One point in a fresh process: a row of COLUMNS (error set where it failed)."""
    batch = max(1, args.tokens // length)
    row = {"model": model, "length": length, "batch": batch, "tokens": batch * length,
           "seconds": "", "peak_mb": "", "held_mb": "", "parameters": "", "loss": "", "error": ""}
    command = [sys.executable, os.path.abspath(__file__), "--point", model, str(length),
               str(batch), "--items", str(args.items), "--steps", str(args.steps),
               "--device", args.device] + (["--amp"] if args.amp else []) \
        + [option for pair in args.config for option in ("--config", pair)]
    process = subprocess.run(command, capture_output=True, text=True)
    result = [line for line in process.stdout.splitlines() if line.startswith(TAG)]
    if process.returncode or not result:
        last = (process.stderr.strip().splitlines() or [f"exit code {process.returncode}"])[-1]
        row["error"] = last[:200]
        return row, None
    measured = json.loads(result[-1][len(TAG):])
    row.update(seconds=round(measured["seconds"], 4), peak_mb=round(measured["peak_mb"], 1),
               held_mb=round(measured["held_mb"], 1), parameters=measured["parameters"],
               loss=round(measured["loss"], 5))
    return row, measured["threads"]


def slope(rows, model, key, low=200, high=2000):
    """Least-squares slope of log(key) on log(length) over low..high; None with < 2 points."""
    import numpy as np

    points = [(r["length"], r[key]) for r in rows if r["model"] == model and not r["error"]
              and low <= r["length"] <= high and r[key] and r[key] > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def cheaper_from(rows, model, key, reference="SASRec"):
    """The shortest measured length from which on `model`'s `key` is below the reference's
    at every longer length; "never" if not at the longest; None without the reference."""
    values = {(r["model"], r["length"]): r[key] for r in rows if not r["error"]}
    lengths = sorted({r["length"] for r in rows if (reference, r["length"]) in values
                      and (model, r["length"]) in values})
    if not lengths:
        return None
    start = "never"
    for length in reversed(lengths):
        if values[(model, length)] < values[(reference, length)]:
            start = length
        else:
            break
    return start


def write_outputs(folder, rows, args, header):
    from recbole_hybrid.utils.files import replaced_atomically, write_text_atomically

    with replaced_atomically(os.path.join(folder, "lengths.csv")) as partial:
        with open(partial, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    write_text_atomically(os.path.join(folder, "lengths.md"), markdown(rows, args, header))
    plot(os.path.join(folder, "lengths.png"), rows, args, header)


def markdown(rows, args, header):
    models = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    lines = [f"# Training step against sequence length\n\n{header}\n"]
    sizes = {r["model"]: r["parameters"] for r in sorted(rows, key=lambda r: r["length"])
             if r["parameters"] != ""}
    if sizes:
        lines.append("Parameters (at the shortest length; the item embedding included): "
                     + ", ".join(f"{m} {n:,}" for m, n in sizes.items()) + "\n")
    for key, title in (("seconds", "seconds per step"), ("peak_mb", "peak MB of the steps")):
        values = {(r["model"], r["length"]): r for r in rows}
        lines.append(f"\n## {title} (batch = {args.tokens} tokens / L)\n")
        lines.append("| model | " + " | ".join(f"L={n}" for n in lengths)
                     + " | slope 200-2000 | cheaper than SASRec from |")
        lines.append("| --- " * (len(lengths) + 3) + "|")
        for model in models:
            cells = []
            for length in lengths:
                row = values.get((model, length))
                cells.append("" if row is None else "failed" if row["error"] else
                             f"{row[key]:.3f}" if key == "seconds" else f"{row[key]:.0f}")
            s, start = slope(rows, model, key), cheaper_from(rows, model, key)
            cells.append("" if s is None else f"{s:.2f}")
            cells.append("" if start is None or model == "SASRec" else
                         f"L={start}" if start != "never" else "not up to the longest")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines.append("\nFailed points: " + "; ".join(
            f"{r['model']} L={r['length']}: {r['error']}" for r in failed))
    return "\n".join(lines) + "\n"


def plot(path, rows, args, header):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recbole_hybrid.utils.files import replaced_atomically

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in ((axes[0], "seconds", "seconds per training step"),
                             (axes[1], "peak_mb", "peak MB of the steps")):
        for model in dict.fromkeys(r["model"] for r in rows):
            points = sorted((r["length"], r[key]) for r in rows
                            if r["model"] == model and not r["error"] and r[key] and r[key] > 0)
            if points:
                axis.plot(*zip(*points), marker="o", label=model)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sequence length L")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{header}; {args.tokens} tokens per batch", fontsize=9)
    figure.tight_layout()
    with replaced_atomically(path, suffix=".png") as partial:
        figure.savefig(partial, dpi=110)
    plt.close(figure)


def out_folder(args):
    from recbole_hybrid.utils.files import next_free, writable_folder

    if args.out:
        folder = writable_folder(args.out)
        if os.path.exists(os.path.join(folder, "lengths.csv")):
            print(f"length_scaling: {folder} already holds lengths.csv from an earlier run; "
                  "pass another --out (or leave it out for the first free name) so that those "
                  "results are kept", file=sys.stderr)
            sys.exit(2)
    else:
        name = args.device + ("-amp" if args.amp else "")
        folder = next_free(writable_folder("length_scaling"), name)
    os.makedirs(folder, exist_ok=True)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per point")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--items", type=int, default=3416, help="catalogue size (ML-1M's)")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                        help="a config key for every model (repeatable)")
    parser.add_argument("--out")
    parser.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        model, length, batch = args.point
        result = run_point(model, int(length), int(batch), args.items, args.steps, args.device,
                           args.amp, overrides(args.config))
        print(TAG + json.dumps(result), flush=True)
        return
    models, lengths = args.models.split(","), [int(n) for n in args.lengths.split(",")]
    overrides(args.config)  # a malformed pair stops here, before any work
    folder = out_folder(args)
    header = (f"{args.device}{' AMP' if args.amp else ' float32'}, {os.cpu_count()} CPUs, "
              f"median of {args.steps} steps after one warm-up, each point a fresh process, "
              "package defaults per model"
              + "".join(f", {pair}" for pair in args.config))
    print(f"length_scaling: {len(models)} models x {len(lengths)} lengths, {args.tokens} tokens "
          f"per batch; writing {folder}", flush=True)
    rows, started = [], time.perf_counter()
    for length in lengths:
        for model in models:
            row, threads = measure(model, length, args)
            rows.append(row)
            print(f"  {model} L={length} B={row['batch']}: "
                  + (f"failed: {row['error']}" if row["error"] else
                     f"{row['seconds']:.3f} s/step, peak {row['peak_mb']:.0f} MB, "
                     f"{threads} threads") + f" [{time.perf_counter() - started:.0f} s]",
                  flush=True)
            write_outputs(folder, rows, args, header)
    print(markdown(rows, args, header))
    print(f"wrote {folder}/lengths.md, lengths.csv, lengths.png in "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
