"""Running a grid's cells as Ray tasks, on a local Ray or a Ray cluster (`compare --engine ray`).

Every cell is one task with `cpus_per_cell` CPUs (torch runs their whole part as threads)
and `gpus_per_cell` GPUs (default 1 where the cluster has GPUs, 0 elsewhere; 0.5 puts two
cells on a GPU), spread over the nodes, in a worker process of its own (`max_calls=1`: as a
local cell's fresh process, RecBole's global state starts clean). A cell runs in the
compare's working directory and writes its run folder and log into the output folder, so
every node needs the same environment and those folders at the same paths (a shared file
system); the driver appends the records to `results.jsonl`, as with local processes.

A cell whose run fails with an error that is not the user's (an internal error; its worker
or node died) is run again by Ray, up to `max_failures` times, then recorded as failed with
its error; a user's error (diverged training, a bad setting) is recorded at once. Ctrl-C or
SIGTERM of the driver cancels every cell's task, killing the workers that train; a driver
that dies ends its Ray job, whose workers Ray stops.
"""

import contextlib
import os
import socket

from recbole_hybrid.compare.cell_processes import log_file_of, run_cell
from recbole_hybrid.config.values import at_least, positive
from recbole_hybrid.errors import ConfigError
from recbole_hybrid.utils import ray_cluster
from recbole_hybrid.utils.processes import start_worker

OPTIONS = {"ray_address": None, "cpus_per_cell": 1, "gpus_per_cell": None, "max_failures": 1}
WAIT_SECONDS = 1.0  # the driver wakes this often (Ctrl-C is noticed between waits)


class CellFailed(Exception):
    """A cell's run failed with an error that was not the user's: Ray runs it again."""


def check(options):
    positive("--cpus_per_cell", options["cpus_per_cell"])
    gpus = options["gpus_per_cell"]
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float))
                             or gpus < 0 or gpus > 1 and gpus != int(gpus)):
        raise ConfigError(f"--gpus_per_cell={gpus}: give 0 (CPU only), a fraction below 1 "
                          "(cells share a GPU) or a whole number of GPUs")
    at_least("--max_failures", options["max_failures"], 0)
    if not isinstance(options["max_failures"], int):
        raise ConfigError(f"--max_failures={options['max_failures']}: must be a whole number")
    if options["ray_address"]:
        ray_cluster.check_address(options["ray_address"])


@contextlib.contextmanager
def connected(options):
    """The Ray connection of the whole grid (its searches join it), with the GPUs per cell
    settled and checked against the cluster's nodes."""
    with ray_cluster.connected(options["ray_address"]):
        if options["gpus_per_cell"] is None:
            gpus = max((g for _, g in ray_cluster.node_resources()), default=0)
            options["gpus_per_cell"] = 1 if gpus else 0
        ray_cluster.check_fits(options["cpus_per_cell"], options["gpus_per_cell"],
                               "--cpus_per_cell / --gpus_per_cell")
        yield


def describe(options, todo):
    return (f", Ray tasks of {options['cpus_per_cell']:g} CPUs and {options['gpus_per_cell']:g} "
            "GPUs each" if todo else "")


def search_options(options):
    """A tuned grid's Ray searches: each trial takes what a cell takes."""
    return {"cpus_per_trial": options["cpus_per_cell"], "gpus_per_trial": options["gpus_per_cell"],
            "max_failures": options["max_failures"]}


def run_cells(cells, config_files, output, options, on_done):
    """Submit every cell as a task; `on_done(cell, outcome, log_file)` is called in this
    process as each ends, in the order they end. Ctrl-C or SIGTERM cancels every unfinished
    task and propagates."""
    import ray

    task = ray.remote(
        num_cpus=options["cpus_per_cell"], num_gpus=options["gpus_per_cell"],
        max_retries=options["max_failures"], retry_exceptions=[CellFailed], max_calls=1,
        scheduling_strategy="SPREAD")(_cell_task)
    output, cwd = os.path.abspath(output), os.getcwd()
    os.makedirs(os.path.join(output, "logs"), exist_ok=True)
    threads = max(1, int(options["cpus_per_cell"]))
    running = {task.remote(cell, config_files, cwd, os.path.join(output, "runs"),
                           log_file_of(output, cell), threads): cell for cell in cells}
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                cell = running.pop(ref)
                on_done(cell, _outcome(ref, options["max_failures"]), log_file_of(output, cell))
    finally:  # an interruption (or an error in on_done): no cell goes on training
        for ref in running:
            ray.cancel(ref, force=True)


def _outcome(ref, max_failures):
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # CellFailed, after its last retry
        cause = getattr(error, "cause", None)
        message = str(cause) if isinstance(cause, CellFailed) else str(error)
        return {"status": "failed", "error": message}
    except ray.exceptions.RayError as error:  # its worker or node died, its last time too
        return {"status": "failed",
                "error": f"the cell's Ray worker ended without a result after "
                         f"{max_failures + 1} attempt(s) (killed, out of memory, or its node "
                         f"was lost?): {type(error).__name__}: {str(error).strip()[:500]}"}


def _cell_task(cell, config_files, cwd, runs_dir, log_file, threads):
    """One cell in a Ray worker: {"status": ..., the run's result or error, "node": where}."""
    import ray

    import recbole_hybrid  # noqa: F401  (the fixes and the models, in this worker)

    start_worker(threads=threads)  # Ray owns the worker's lifetime and signals
    node = {"node": f"{socket.gethostname()} {ray.util.get_node_ip_address()}",
            "ray_node_id": ray.get_runtime_context().get_node_id()}
    missing = missing_folders(node["node"], cwd, os.path.dirname(log_file))
    if missing:
        return {"status": "failed", **node, "error": missing}
    os.chdir(cwd)
    outcome, users = run_cell(cell, config_files, runs_dir, log_file,
                              ray_cluster.assigned_devices())
    if outcome["status"] == "failed" and not users:
        raise CellFailed(outcome["error"])
    return {**outcome, **node}


def missing_folders(node, *folders):
    """The error of a node that lacks one of the compare's `folders`, else None."""
    missing = [folder for folder in folders if not os.path.isdir(folder)]
    if not missing:
        return None
    return (f"{node} does not have {', '.join(missing)}: every node of a Ray grid needs the "
            "compare's working directory, its output folder and the data at the same paths, "
            "e.g. on a shared file system")
