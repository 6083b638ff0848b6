"""A comparison grid on a two-node Ray cluster (both nodes on this machine, one CPU each):
`compare --engine ray`, stopped with SIGTERM after the first finished cell, then the same
command again. Prints the command, the cells each node ran, the wall times, and what the
second run trained (only the missing cells).

    .venv/bin/python benchmarks/ray_grid_two_nodes.py       # about 8 minutes on 2 cores

Data: Amazon Office Products (`--source`, the shared sequences file), converted into a
temporary folder; the grid is the MaTrRec paper's Office protocol
(properties/grids/office-products.yaml) for `--models`, `--seeds` seeds, `--epochs` epochs.
"""

import argparse
import collections
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recbole_hybrid(*arguments):
    return [sys.executable, "-m", "recbole_hybrid", *arguments]


def records(output):
    path = os.path.join(output, "results.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def training_cells():
    """Pids of this machine's processes running a grid cell's Ray task."""
    pids = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                if f.read().startswith(b"ray::_cell_task"):
                    pids.append(int(path.split("/")[2]))
        except OSError:
            continue
    return pids


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=os.path.join(ROOT, "..", "shared", "datasets",
                                                         "Office_Products.txt"))
    parser.add_argument("--models", default="SASRec,MaTrRec")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    work = tempfile.mkdtemp(prefix="ray-grid-")
    data, output = os.path.join(work, "data"), os.path.join(work, "out")
    subprocess.run(recbole_hybrid("convert", "--format", "sequences", "--source", args.source,
                                  "--name", "amazon-office-products", "--data_path", data),
                   check=True, capture_output=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        command = recbole_hybrid(
            "compare", "--grid", os.path.join(ROOT, "recbole_hybrid", "properties", "grids",
                                              "office-products.yaml"),
            "--models", args.models, "--seeds", str(args.seeds), f"--epochs={args.epochs}",
            f"--data_path={data}", "--output", output, "--engine", "ray",
            f"--ray_address={cluster.address}")
        print("command:", " ".join(command[1:]))
        started = time.time()
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        while not records(output) and first.poll() is None:
            time.sleep(0.5)
        running = training_cells()
        first.send_signal(signal.SIGTERM)
        printed, _ = first.communicate()
        stopped = time.time() - started
        time.sleep(5)
        print(f"run 1: SIGTERM after its first finished cell, {stopped:.0f} s in, with "
              f"{len(running)} cell(s) training; exit code {first.returncode}; last line: "
              f"{printed.strip().splitlines()[-1]}")
        print(f"  cells kept: {len(records(output))}; cell tasks still running 5 s later: "
              f"{len(training_cells())}")
        started = time.time()
        second = subprocess.run(command, capture_output=True, text=True)
        print(f"run 2 (the same command): exit code {second.returncode}, "
              f"{time.time() - started:.0f} s; "
              + next(line for line in second.stdout.splitlines() if "already done" in line))
        done = records(output)
        nodes = collections.Counter(r["ray_node_id"][:8] for r in done)
        print(f"cells: {len(done)} records, {sum(r['status'] == 'ok' for r in done)} ok; per "
              "node: " + ", ".join(f"{node} {count}" for node, count in nodes.items()))
        for record in done:
            print(f"  {record['model']} seed {record['seed']}: node {record['ray_node_id'][:8]}, "
                  f"{record['seconds']:.0f} s, test ndcg@10 {record['test_result']['ndcg@10']:.4f}")
        with open(os.path.join(output, "table.md")) as f:
            print(f.read().split("\n\n")[0])
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
