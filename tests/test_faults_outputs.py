"""Faults around what a run writes and reads back: output folders that cannot be written,
checkpoints that fail half-way, runs started together, and resuming. Nothing finished is
lost or overwritten."""

import errno
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    SCRIPT,
    INTER_HEADER as HEADER,
    TINY_SASREC,
    assert_one_paragraph,
    cli_run,
    flags,
    read_only,
    write_tiny_dataset,
)

from recbole_hybrid.quick_start import run_folder as outputs, runner
from recbole_hybrid.errors import CheckpointError, OutputError

# ---- outputs that cannot be written ---------------------------------------------------------

def test_a_file_in_the_way_of_the_output_folder(capsys, sasrec, workdir):
    (workdir / "runs").write_text("my notes")
    code, err = cli_run(capsys, *sasrec, "--output_dir=runs/sub")
    assert_one_paragraph(code, err, "is a file, not a folder")
    assert (workdir / "runs").read_text() == "my notes"


@pytest.fixture
def read_only_folder(workdir):
    folder = workdir / "locked"
    os.makedirs(folder)
    with read_only(folder):
        yield folder


def test_a_read_only_output_folder(capsys, sasrec, read_only_folder):
    code, err = cli_run(capsys, *sasrec, f"--output_dir={read_only_folder}/runs")
    assert_one_paragraph(code, err, "not writable")


def test_training_that_diverges_names_the_learning_rate(capsys, tiny, workdir):
    code, err = cli_run(capsys, "--model=Mamba4Rec", "--dataset=tiny", "--learning_rate=100",
                        *flags({k: v for k, v in tiny.items() if k not in ("n_layers", "n_heads",
                                                                          "inner_size")}))
    assert_one_paragraph(code, err, "training diverged", "lower learning_rate (now 100)")


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 40192 vs 40080"),
])
def test_a_failed_checkpoint_write_keeps_no_partial_file(tiny, workdir, monkeypatch, failure):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(".partial"):
            with open(f, "wb") as partial:
                partial.write(b"half a checkpoint")
            raise failure  # torch reports a full disk as a RuntimeError
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OutputError, match="could not be written"):
        runner.run("SASRec", "tiny", overrides=tiny, output_dir=str(workdir / "runs"))
    assert not glob.glob(str(workdir / "runs" / "**" / "*.partial"), recursive=True)


def test_runs_started_in_the_same_second_get_their_own_folder_and_log(tiny, workdir):
    folders = []
    for _ in range(3):
        with outputs.new_run_dir(workdir / "runs", "SASRec", "tiny") as path:
            folders.append(path)
    assert len(set(folders)) == 3 and all(os.path.isdir(f) for f in folders)
    from recbole.utils import init_logger

    from recbole_hybrid.config.builder import build_config

    config = build_config("SASRec", "tiny", overrides=tiny)
    names = set()
    for _ in range(2):
        init_logger(config)
        names.add(outputs.log_file())
    assert len(names) == 2


# ---- resuming ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch SASRec run on its own copy of the tiny dataset: (result, data folder)."""
    folder = tmp_path_factory.mktemp("resume")
    write_tiny_dataset(str(folder / "data"))
    old = os.getcwd()
    os.chdir(folder)
    try:
        result = runner.run("SASRec", "tiny", overrides=dict(TINY_SASREC, epochs=3,
                                                             data_path=str(folder / "data")),
                            output_dir=str(folder / "runs"))
    finally:
        os.chdir(old)
    return result, folder / "data"


def copy_checkpoint(result, folder, **changes):
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    checkpoint.update(changes)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(result["checkpoint"]))
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_a_resume_in_which_no_epoch_beats_the_checkpoint_keeps_its_results(trained, workdir):
    result, _ = trained
    # a converged run: its best valid score cannot be beaten in the epochs left
    checkpoint = copy_checkpoint(result, workdir / "run", best_valid_score=1.0)
    resumed = runner.run(resume=checkpoint, overrides={"epochs": 5})
    assert resumed["best_valid_result"] and resumed["test_result"]
    assert os.path.isfile(resumed["results_file"])
    assert resumed["best_valid_score"] == 1.0


def test_eval_step_0_still_reports_a_best_valid_result(tiny, workdir):
    result = runner.run("SASRec", "tiny", overrides=dict(tiny, eval_step=0),
                        output_dir=str(workdir / "runs"))
    assert set(result["best_valid_result"]) == set(result["test_result"])


def test_resume_overrides_apply_or_are_refused(trained, workdir, monkeypatch):
    result, data = trained
    checkpoint = copy_checkpoint(result, workdir / "run")
    seen = {}
    original = runner._resume

    def spy(trainer, path, config):
        original(trainer, path, config)
        seen["lr"] = trainer.optimizer.param_groups[0]["lr"]

    monkeypatch.setattr(runner, "_resume", spy)
    resumed = runner.run(resume=checkpoint, overrides={"epochs": 5, "learning_rate": 0.5})
    assert seen["lr"] == 0.5 and resumed["resumed_from"] == checkpoint
    with pytest.raises(CheckpointError, match="SASRec run on tiny; --model=GRU4Rec"):
        runner.run(model="GRU4Rec", resume=checkpoint, overrides={"epochs": 6})
    with pytest.raises(CheckpointError, match="hidden_size .*cannot change on resume"):
        runner.run(resume=checkpoint, overrides={"epochs": 6, "hidden_size": 32})


def test_resume_follows_a_moved_dataset_and_refuses_weights_that_do_not_fit(trained, workdir):
    result, data = trained
    checkpoint = copy_checkpoint(result, workdir / "run")
    moved = workdir / "moved"
    os.makedirs(moved / "tiny")
    (moved / "tiny" / "tiny.inter").write_text((data / "tiny" / "tiny.inter").read_text())
    resumed = runner.run(resume=checkpoint, overrides={"epochs": 4, "data_path": str(moved)})
    assert resumed["test_result"]
    bigger = workdir / "bigger"
    os.makedirs(bigger / "tiny")
    (bigger / "tiny" / "tiny.inter").write_text(
        HEADER + "".join(f"{u}\t{i}\t{t}\n" for u in range(1, 30)
                         for t, i in enumerate(range(u, u + 8))))
    with pytest.raises(CheckpointError, match="do not fit SASRec"):
        runner.run(resume=checkpoint, overrides={"epochs": 6, "data_path": str(bigger)})


@pytest.mark.slow
def test_a_resume_keeps_the_first_runs_results_and_per_user_values(trained, workdir):
    result, _ = trained
    checkpoint = copy_checkpoint(result, workdir / "run")
    first = runner.run(resume=checkpoint, overrides={"epochs": 4})
    first_values = open(first["per_user_file"], "rb").read()
    second = runner.run(resume=checkpoint, overrides={"epochs": 5})
    assert os.path.basename(second["results_file"]) == "results-2.json"
    assert os.path.basename(second["per_user_file"]) == "per_user_test-2.npz"
    assert open(first["per_user_file"], "rb").read() == first_values
    assert json.load(open(first["results_file"]))["per_user_file"] == first["per_user_file"]


def test_a_resume_refuses_model_keys_from_config_files_and_finished_runs(trained, workdir):
    result, _ = trained
    checkpoint = copy_checkpoint(result, workdir / "run")
    (workdir / "arch.yaml").write_text("hidden_size: 32\nn_layers: 2\n")
    with pytest.raises(CheckpointError, match="hidden_size, n_layers .* cannot change on resume"):
        runner.run(config_files=[str(workdir / "arch.yaml")], resume=checkpoint,
                   overrides={"epochs": 5})
    with pytest.raises(CheckpointError, match="has trained 3 epochs already and epochs=3"):
        runner.run(resume=checkpoint, overrides={"epochs": 3})


@pytest.mark.slow
def test_a_multi_process_runs_checkpoint_resumes_in_one_process(trained, workdir):
    """Its config holds the workers' process-group settings: used as they are, the resume
    waited forever for a second process."""
    result, _ = trained
    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    checkpoint["config"].variable_config_dict.update(
        nproc=2, world_size=2, offset=0, local_rank=0, ip="127.0.0.1", port=29633,
        ddp_backend="gloo")
    os.makedirs(workdir / "ddp")
    path = str(workdir / "ddp" / "SASRec-ddp.pth")
    torch.save(checkpoint, path)
    process = subprocess.run([sys.executable, SCRIPT, f"--resume={path}", "--epochs=4"],
                             cwd=workdir, capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stderr[-2000:]


def test_two_resumes_of_one_run_do_not_race(trained, workdir):
    import fcntl

    result, _ = trained
    checkpoint = copy_checkpoint(result, workdir / "run")
    descriptor = os.open(workdir / "run", os.O_RDONLY)  # as a resume running elsewhere holds it
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another process is resuming"):
            runner.run(resume=checkpoint, overrides={"epochs": 4})
    finally:
        os.close(descriptor)


def test_a_file_that_is_no_checkpoint(capsys, workdir):
    (workdir / "notes.pth").write_text("not a checkpoint")
    code, err = cli_run(capsys, f"--resume={workdir / 'notes.pth'}")
    assert_one_paragraph(code, err, "is not a readable RecBole checkpoint")
