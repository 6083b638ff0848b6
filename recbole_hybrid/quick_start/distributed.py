"""Multi-process training: one process per GPU (nccl) or per CPU worker (gloo), RecBole's
`run_recbole` in each, `world_size` processes over all nodes; rank 0 of this node reports.

The workers die with the command that started them (`utils.processes.start_worker`), and an
interruption of the command (Ctrl-C, SIGTERM) stops every worker before it returns.
"""

import glob
import os
import sys
from unittest import mock

import torch

from recbole_hybrid.compat import ddp_backend
from recbole_hybrid.config.builder import config_inputs
from recbole_hybrid.errors import Interrupted, UserError, last_line
from recbole_hybrid.utils import processes
from recbole_hybrid.utils.ports import check_port

EFFICIENCY_KEYS = ("parameters", "epochs_run", "train_seconds_per_epoch", "test_inference_seconds",
                   "peak_memory_mb")


def total_processes(nproc, world_size):
    """The processes of all nodes: `world_size`, or `nproc` when it is -1."""
    return nproc if world_size == -1 else world_size


def check_launch(nproc, world_size, ip, port, offset):
    """Raise UserError for process counts, ranks or a port that cannot work, before any
    work starts (`nproc` >= 1 is checked already)."""
    world_size = total_processes(nproc, world_size)
    if world_size < nproc:
        raise UserError(
            f"--world_size ({world_size}) counts the processes on all nodes, so it cannot be "
            f"smaller than --nproc ({nproc}), the processes on this node"
        )
    if offset < 0 or offset + nproc > world_size:
        raise UserError(
            f"--group_offset={offset} is the global rank of this node's first process: with "
            f"--nproc={nproc} and --world_size={world_size} it must be from 0 to "
            f"{world_size - nproc}"
        )
    check_port(port, ip if offset == 0 else None, host_flag="--ip")  # rank 0 listens on this node


def run_distributed(config, config_files, overrides, nproc, world_size, ip, port, offset):
    """Train and test with `nproc` processes here; returns rank 0's result (or an empty
    result on nodes with offset > 0, which report nothing)."""
    import torch.multiprocessing as mp

    world_size = total_processes(nproc, world_size)  # check_launch has checked them
    model, dataset = config["model"], config["dataset"]
    files, config_dict = config_inputs(model, dataset, config_files, overrides)
    backend = ddp_backend({**config.final_config_dict, **config_dict})
    if backend == "nccl" and nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc={nproc} asks for one GPU per process, but {torch.cuda.device_count()} GPUs "
            "are visible; lower --nproc, or pass --ddp_backend=gloo for CPU processes"
        )
    config_dict.update(checkpoint_dir=config["checkpoint_dir"], world_size=world_size, ip=ip,
                       port=port, nproc=nproc, offset=offset, ddp_backend=backend)
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    workers = mp.start_processes(_worker, args=(os.getpid(), model, dataset, files, config_dict, queue),
                                 nprocs=nproc, join=False, start_method="spawn")
    try:
        result = join_reading(workers, queue)
    except KeyboardInterrupt:
        for process in workers.processes:
            processes.stop(process)
        saved = sorted(glob.glob(os.path.join(config["checkpoint_dir"], f"{model}-*.pth")))
        raise Interrupted("interrupted; every training process is stopped. " + (
            f"The best checkpoint so far is {saved[-1]} (--resume continues single-process runs)"
            if saved else "No checkpoint had been written yet.")) from None
    except mp.ProcessRaisedException as error:  # a worker's traceback: its last line says why
        raise UserError(f"a training process failed: {last_line(error)}") from None
    except mp.ProcessExitedException as error:
        raise UserError(f"a training process ended with exit code {error.exit_code} "
                        "(killed, or out of memory?)") from None
    # RecBole's workers report metrics only: the efficiency figures are not measured here
    unmeasured = {**dict.fromkeys(EFFICIENCY_KEYS), "device": f"{nproc} {backend} processes",
                  "per_user_file": None}
    if result is None:  # the nodes with offset > 0 report nothing
        return {"best_valid_score": None, "best_valid_result": {}, "test_result": {},
                "checkpoint": None, "log_file": None, **unmeasured}
    checkpoints = sorted(glob.glob(os.path.join(config["checkpoint_dir"], f"{model}-*.pth")))
    return {
        "best_valid_score": float(result["best_valid_score"]),
        "best_valid_result": dict(result["best_valid_result"]),
        "test_result": dict(result["test_result"]),
        "checkpoint": checkpoints[-1] if checkpoints else None,
        "log_file": None,
        **unmeasured,
    }


def join_reading(workers, queue):
    """Wait for every worker of `workers` (torch.multiprocessing's context) to end and return
    what rank 0 put on `queue` (None if nothing). The queue is read while the workers run:
    a result larger than the pipe's buffer (64 KiB) would otherwise block its writer, and so
    the join, for ever."""
    result = None
    while True:
        finished = workers.join(timeout=0.2)
        if result is None and not queue.empty():
            result = queue.get()
        if finished:
            return result


def _worker(local_rank, parent_pid, model, dataset, files, config_dict, queue):
    """One process of a multi-process run: RecBole's run_recbole (this module's import has
    applied the fixes and registered the models in the new process)."""
    gloo = config_dict["ddp_backend"] == "gloo"  # CPU processes share the cores, not each take all
    processes.start_worker(parent_pid, max(1, (os.cpu_count() or 1) // config_dict["nproc"])
                           if gloo else None)
    from recbole.quick_start import run_recbole

    with mock.patch.object(sys, "argv", sys.argv[:1]):
        run_recbole(model, dataset, files, {**config_dict, "local_rank": local_rank}, queue=queue)
