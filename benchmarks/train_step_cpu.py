"""CPU training step of MaTrRec and Mamba4Rec: this checkout next to an earlier revision.

    python benchmarks/train_step_cpu.py [--before REV] [--repeats 5] [--shapes 2048x50,256x200]
                                        [--models MaTrRec,Mamba4Rec] [--items 3416]

One training step: forward, CE loss over all items, backward, Adam step, on a batch of random
item sequences of full length (items uniform in 1..--items), with each model's package
defaults (hidden 64, d_state 32, d_conv 4, expand 2, dropout as in its yaml; mamba_impl
auto, i.e. the C++ kernels when they build). "before" is the package as it was at REV,
exported with `git archive` into ~/.cache/recbole_hybrid_bench/REV and imported from there in
a process of its own, with its own C++ build; "after" is the package this Python imports.
The two processes take turns, one step each, so that load from other programs on the machine
hits both alike; each uses torch's default number of threads. Reported: the median of
--repeats steps after one warm-up step, in wall-clock seconds and in CPU seconds (all threads
of the process; on a shared machine the steadier of the two), and the loss of the initial
weights on the batch with dropout off (eval mode), which must agree between the two (same
seed, same initial weights, same batch); the training losses differ by the dropout masks,
which this package draws with its own generator since the C++ dropout.
--profile N: after the timed steps each process profiles one more step (torch.profiler) and
prints its N top rows by self CPU time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BASELINE = "4ef9006"  # the revision before the Triton kernels and the leaner CPU ops
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "recbole_hybrid_bench")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "@@ "  # protocol lines from a worker; anything else it prints is passed through


def export(revision):
    """The package at `revision`, exported once; returns the folder to put on PYTHONPATH."""
    folder = os.path.join(CACHE, revision)
    if not os.path.isdir(os.path.join(folder, "recbole_hybrid")):
        os.makedirs(folder, exist_ok=True)
        archive = subprocess.run(["git", "-C", REPO, "archive", revision, "recbole_hybrid"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


class Worker:
    """A process that builds one model and runs one training step per request."""

    def __init__(self, model, batch, length, items, pythonpath=None, extensions=None):
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
        if extensions:
            env["TORCH_EXTENSIONS_DIR"] = extensions
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", model, str(batch), str(length),
             str(items)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.info = self.read()  # package path, threads, eval loss, warm-up loss and seconds

    def read(self):
        for line in self.process.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
            print("   ", line, end="")
        raise RuntimeError(f"worker exited with {self.process.wait()}")

    def step(self):
        """(wall seconds, CPU seconds of all threads) of one training step."""
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        reply = self.read()
        return reply["seconds"], reply["cpu_seconds"]

    def profile(self, rows):
        """The profiler's table of one training step, its top `rows` by self CPU time."""
        self.process.stdin.write(f"profile {rows}\n")
        self.process.stdin.flush()
        return self.read()["table"]

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def serve(model_name, batch, length, items):
    """Worker side: build the model, report, then one step per line on stdin."""
    import torch

    import recbole_hybrid
    from step_common import training_setup

    folder = os.path.dirname(recbole_hybrid.__file__)
    model, optimizer, interaction = training_setup(model_name, batch, length, items)

    def step():
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu_start}

    model.eval()
    with torch.no_grad():
        eval_loss = model.calculate_loss(interaction).item()
    model.train()
    reply({"package": folder, "threads": torch.get_num_threads(), "eval_loss": eval_loss,
           **step()})
    for line in sys.stdin:
        if line.startswith("profile"):
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            rows = int(line.split()[1])
            reply({"table": prof.key_averages().table(sort_by="self_cpu_time_total",
                                                      row_limit=rows, max_name_column_width=40)})
        else:
            reply(step())


def reply(message):
    print(TAG + json.dumps(message), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="2048x50,256x200", help="BATCHxL,...")
    parser.add_argument("--models", default="MaTrRec,Mamba4Rec")
    parser.add_argument("--items", type=int, default=3416, help="catalogue size (ML-1M's)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N top rows of a profiled step per process")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, batch, length, items = args.worker
        return serve(model, int(batch), int(length), int(items))
    before = export(args.before)
    print(f"before: {args.before} exported to {before}; after: the package this Python imports; "
          f"{os.cpu_count()} CPUs; median of {args.repeats} steps after one warm-up, "
          "the two processes taking turns")
    rows = []
    for model in args.models.split(","):
        for shape in args.shapes.split(","):
            batch, length = (int(v) for v in shape.split("x"))
            workers = {
                "before": Worker(model, batch, length, args.items, pythonpath=before,
                                 extensions=os.path.join(before, "torch_extensions")),
                "after": Worker(model, batch, length, args.items),
            }
            seconds = {name: [] for name in workers}
            for _ in range(args.repeats):
                for name, worker in workers.items():
                    seconds[name].append(worker.step())
            for name, worker in workers.items():
                if args.profile:
                    print(f"\n{model} B={batch} L={length}, {name}: profile of one step\n"
                          + worker.profile(args.profile), flush=True)
                worker.close()
            rows.append((model, batch, length, {n: w.info for n, w in workers.items()}, seconds))
            print(f"{model} B={batch} L={length}: after imports {workers['after'].info['package']}; "
                  + "; ".join(f"{name} (wall, CPU) s " + str([(round(w, 2), round(c, 2)) for w, c in s])
                              for name, s in seconds.items()), flush=True)
    print("\n| model | batch | L | threads | before s/step | after s/step | after / before | "
          "before CPU s/step | after CPU s/step | after / before (CPU) | eval loss before | after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, batch, length, info, seconds in rows:
        wall = {name: statistics.median(w for w, _ in s) for name, s in seconds.items()}
        cpu = {name: statistics.median(c for _, c in s) for name, s in seconds.items()}
        print(f"| {model} | {batch} | {length} | {info['after']['threads']} | "
              f"{wall['before']:.2f} | {wall['after']:.2f} | {wall['after'] / wall['before']:.2f}x | "
              f"{cpu['before']:.2f} | {cpu['after']:.2f} | {cpu['after'] / cpu['before']:.2f}x | "
              f"{info['before']['eval_loss']:.6f} | {info['after']['eval_loss']:.6f} |")


if __name__ == "__main__":
    main()
