"""Multi-process training on CPU (gloo) and the clear errors for impossible settings."""

import glob
import json
import socket

import pytest
import torch
from recbole.config import Config
from recbole.trainer import Trainer
from recbole.utils import get_model

from conftest import flags, free_port
from recbole_hybrid import compat
from test_run import run_script


@pytest.fixture
def one_process_group(tiny):
    """Settings of rank 0 in a one-process group, as each spawned worker gets them."""
    settings = dict(tiny, train_neg_sample_args=None, local_rank=0, world_size=1, nproc=1,
                    offset=0, ip="127.0.0.1", port=free_port(),
                    load_col={"inter": ["user_id", "item_id", "timestamp"]})
    yield settings
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_a_worker_gets_a_gloo_group_and_a_cpu_ddp_model(one_process_group):
    config = Config("SASRec", "tiny", config_dict=one_process_group)
    assert torch.distributed.get_backend() == "gloo" and config["device"].type == "cpu"
    assert config["single_spec"] is False
    from recbole.data import create_dataset, data_preparation

    train, _, _ = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, get_model("SASRec")(config, train._dataset))
    assert isinstance(trainer.distributed_model, torch.nn.parallel.DistributedDataParallel)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs RecBole's own nccl path works")
def test_without_the_fix_a_worker_needs_nccl_and_cuda(one_process_group):
    with compat.reverted("ddp_on_cpu"):
        with pytest.raises(RuntimeError, match="NCCL"):  # on this CPU build of torch
            Config("SASRec", "tiny", config_dict=one_process_group)


@pytest.mark.slow
def test_two_cpu_processes_train_and_rank_0_reports(tiny, workdir):
    settings = dict(tiny, epochs=2)
    results = {}
    for nproc in (2, 1):
        done = run_script("--model=MaTrRec", "--dataset=tiny", f"--nproc={nproc}",
                          f"--port={free_port()}", f"--output_dir=runs{nproc}", *flags(settings),
                          cwd=workdir, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "ndcg@10" in done.stdout and "hit@10" in done.stdout
        (results_file,) = glob.glob(str(workdir / f"runs{nproc}" / "*" / "results.json"))
        results[nproc] = json.load(open(results_file))
    assert results[2].keys() == results[1].keys()
    assert results[2]["test_result"].keys() == results[1]["test_result"].keys()
    assert 0 <= results[2]["test_result"]["ndcg@10"] <= 1
    assert results[2]["checkpoint"] and results[2]["checkpoint"].endswith(".pth")


@pytest.mark.slow
def test_world_size_smaller_than_nproc_is_explained(workdir):
    done = run_script("--model=SASRec", "--nproc=2", "--world_size=1", cwd=workdir)
    assert done.returncode == 2 and "cannot be smaller than --nproc (2)" in done.stderr


@pytest.mark.slow
def test_port_in_use_is_explained(tiny, workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_script("--model=SASRec", "--dataset=tiny", "--nproc=2", f"--port={port}",
                          *flags(tiny), cwd=workdir)
    assert done.returncode == 2 and f"--port={port}" in done.stderr and "not free" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPUs")
def test_nccl_without_gpus_is_explained(tiny, workdir):
    done = run_script("--model=SASRec", "--dataset=tiny", "--nproc=2", "--ddp_backend=nccl",
                      *flags(tiny), cwd=workdir)
    assert done.returncode == 2 and "0 GPUs are visible" in done.stderr


def _put_a_large_result(rank, queue):
    """A worker of the test below: rank 0 reports 1 MB, far more than a pipe holds."""
    if rank == 0:
        queue.put({"test_result": {f"metric@{k}": float(k) for k in range(40000)}})


@pytest.mark.slow
def test_a_result_larger_than_the_pipe_does_not_block_the_join():
    """A result over the pipe's 64 KiB blocked rank 0's put until someone read it, and the
    parent read only after the join: neither ever ended."""
    import threading

    import torch.multiprocessing as mp

    from recbole_hybrid.quick_start.distributed import join_reading

    queue = mp.get_context("spawn").SimpleQueue()
    workers = mp.start_processes(_put_a_large_result, args=(queue,), nprocs=2, join=False,
                                 start_method="spawn")
    answer = []
    joiner = threading.Thread(target=lambda: answer.append(join_reading(workers, queue)),
                              daemon=True)
    joiner.start()
    joiner.join(timeout=120)
    for process in workers.processes:
        if process.is_alive():
            process.kill()
    assert not joiner.is_alive(), "the workers and the join still wait after 120 s"
    assert len(answer[0]["test_result"]) == 40000
