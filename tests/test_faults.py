"""Faults a researcher meets: every one ends in one clear paragraph (exit code 2), an
interruption (exit code 130) or an "internal error" with its traceback in a file (exit
code 1), and nothing finished is lost, no process is left running.

Each class of fault is tried with several cases on tiny data; the signal tests send real
signals to real subprocesses and then look for any process left behind.
"""

import contextlib
import errno
import glob
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import TINY_SASREC, flags, write_tiny_dataset
from recbole_hybrid import cli, outputs, runner
from recbole_hybrid.compare import Grid, check_grid
from recbole_hybrid.distributed import check_port_free
from recbole_hybrid.errors import CheckpointError, ConfigError, OutputError, UserError
from recbole_hybrid.report import ranks
from recbole_hybrid.tune import tune

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPOSITORY, "run_recbole_hybrid.py")


def cli_run(capsys, *argv):
    """`recbole-hybrid run ...` in this process: (exit code, stderr)."""
    code = cli.main(["run", *argv])
    return code, capsys.readouterr().err


def assert_one_paragraph(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: "), err
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def sasrec(tiny, workdir):
    """Flags of a one-epoch SASRec run on the tiny dataset."""
    return ["--model=SASRec", "--dataset=tiny", *flags(dict(tiny, epochs=1))]


# ---- settings: unknown keys, wrong types and ranges, broken yaml -------------------------

@pytest.mark.parametrize("flag, fragments", [
    ("--epoch=1", ["'epoch' is not a setting", "did you mean 'epochs'"]),
    ("--learnig_rate=0.1", ["did you mean 'learning_rate'"]),
    ("--num_layers=2", ["'num_layers' is a setting of", "not of SASRec", "did you mean 'n_layers'"]),
    ("--MAX_ITEM_LIST_LEN=5", ["did you mean 'MAX_ITEM_LIST_LENGTH'"]),
])
def test_unknown_keys_get_a_did_you_mean(capsys, sasrec, workdir, flag, fragments):
    code, err = cli_run(capsys, *sasrec, flag)
    assert_one_paragraph(code, err, *fragments)
    assert not os.path.exists(workdir / "runs")


def test_a_config_file_naming_another_model_or_dataset_than_the_command(capsys, sasrec, workdir):
    for key, value in (("model", "GRU4Rec"), ("dataset", "ml-100k")):
        (workdir / "other.yaml").write_text(f"{key}: {value}\n")
        code, err = cli_run(capsys, *sasrec, "--config_files", str(workdir / "other.yaml"))
        assert_one_paragraph(code, err, f"but the config files set {key}: {value}")


def test_config_files_may_hold_other_models_keys_but_no_typos(capsys, sasrec, workdir):
    shared = workdir / "shared.yaml"
    shared.write_text("num_layers: 2\nk_interests: 10\n")  # Mamba4Rec's and MLSA4Rec's keys
    code, err = cli_run(capsys, *sasrec, "--config_files", str(shared))
    assert code == 0, err
    typo = workdir / "typo.yaml"
    typo.write_text("stoping_step: 3\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(typo))
    assert_one_paragraph(code, err, "config files", "did you mean 'stopping_step'")


@pytest.mark.parametrize("flag, fragment", [
    ("--epochs=ten", "epochs must be a positive integer"),
    ("--epochs=0", "epochs must be a positive integer"),
    ("--epochs=-3", "epochs must be a positive integer"),
    ("--learning_rate=abc", "learning_rate must be a positive number"),
    ("--learning_rate=-0.1", "learning_rate must be a positive number"),
    ("--learning_rate=1/0", "ZeroDivisionError"),
    ("--MAX_ITEM_LIST_LENGTH=0", "MAX_ITEM_LIST_LENGTH must be a positive integer"),
    ("--train_batch_size=0", "train_batch_size must be a positive integer"),
    ("--topk=[0]", "topk must be"),
    ("--show_progress=maybe", "show_progress must be True or False"),
    ("--learner=nadam", "learner must be one of"),
    ("--valid_metric=NDCG@50", "valid_metric NDCG@50 is not among the metrics"),
    ("--loss_type=Hinge", "loss_type must be CE or BPR"),
    ("--seed=-1", "seed must be an integer from 0"),
    ("--state=LOUD", "state must be one of"),
    ("--hidden_dropout_prob=1", "hidden_dropout_prob must be a probability in [0, 1)"),
    ("--clip_grad_norm=abc", "clip_grad_norm must be empty or a mapping"),
    ("--load_col=inter", "load_col must be empty"),
    ("--metrics=['Recal','NDCG']", "did you mean 'recall'"),
    ("--n_layers=0", "n_layers must be a positive integer"),
    ("--gpu_id=abc", "gpu_id must be a GPU index"),
    ("--n_heads=3", "SASRec cannot be built"),  # hidden 16 does not split into 3 heads
])
def test_impossible_values_fail_before_training_with_one_paragraph(capsys, sasrec, workdir,
                                                                   flag, fragment):
    code, err = cli_run(capsys, *sasrec, flag)
    assert_one_paragraph(code, err, fragment)
    assert "The number of users" not in err  # before RecBole loaded (and logged) the data
    assert not glob.glob(str(workdir / "runs" / "*" / "*"))  # no checkpoint, no results


def test_a_value_from_a_file_names_the_file_and_empty_files_are_fine(capsys, sasrec, workdir):
    (workdir / "bad.yaml").write_text("stopping_step: two\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(workdir / "bad.yaml"))
    assert_one_paragraph(code, err, "stopping_step must be a positive integer", "bad.yaml")
    (workdir / "empty.yaml").write_text("# nothing set here yet\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(workdir / "empty.yaml"))
    assert code == 0, err


def test_broken_yaml_names_the_file_and_line(capsys, sasrec, workdir):
    broken = workdir / "broken.yaml"
    broken.write_text("epochs: 2\nlearning_rate: [0.1\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(broken))
    assert_one_paragraph(code, err, "broken.yaml:3", "not valid yaml")
    twice = workdir / "twice.yaml"
    twice.write_text("epochs: 2\nlearning_rate: 0.1\nepochs: 3\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(twice))
    assert_one_paragraph(code, err, "twice.yaml:3", "`epochs` is set twice")
    listed = workdir / "list.yaml"
    listed.write_text("- epochs\n- 2\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(listed))
    assert_one_paragraph(code, err, "must hold `key: value` settings")
    grid = workdir / "grid.yaml"
    grid.write_text("models: [SASRec\n")
    assert cli.main(["compare", "--grid", str(grid)]) == 2
    assert "not valid yaml" in capsys.readouterr().err
    grid.write_text("models: SASRec\ndatasets: [tiny]\n")
    assert cli.main(["compare", "--grid", str(grid)]) == 2
    assert "`models` must be a list" in capsys.readouterr().err


@pytest.mark.parametrize("flags_, fragment", [
    (["--nproc=0"], "--nproc=0"),
    (["--world_size=0"], "--world_size=0"),
    (["--nproc=2", "--port=70000"], "--port=70000 must be a port number"),
    (["--nproc=2", "--port=abc"], "--port=abc must be a port number"),
    (["--nproc=2", "--world_size=4", "--group_offset=3"], "--group_offset=3"),
    (["--nproc=2", "--world_size=2", "--group_offset=-1"], "--group_offset=-1"),
])
def test_process_counts_ranks_and_ports_are_checked(capsys, sasrec, workdir, flags_, fragment):
    code, err = cli_run(capsys, *sasrec, *flags_)
    assert_one_paragraph(code, err, fragment)
    assert not os.path.exists(workdir / "runs")


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--nproc=two"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


# ---- data files -----------------------------------------------------------------------------

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
ROWS = "".join(f"{u}\t{i}\t{t}\n" for u in range(1, 7) for t, i in enumerate(range(u, u + 6)))


@pytest.mark.parametrize("content, fragments", [
    (HEADER.replace("float", "int") + ROWS, ["timestamp:int", "name:type"]),
    ("user_id\titem_id\ttimestamp\n" + ROWS, ["'user_id'", "name:type"]),
    (HEADER + ROWS + "7\t3\tyesterday\n", ["declared float but holds 'yesterday'", "line(s) 38"]),
    (HEADER + ROWS + "7\t3\tnan\n", ["declared float but holds 'nan'"]),
    (HEADER + ROWS + "7\t3\t\n", ["column timestamp is empty on line(s) 38"]),
    (HEADER + ROWS + "7\t3\n", ["column timestamp is empty on line(s) 38"]),
    (HEADER + ROWS + "7\t3\t4\t5\n", ["different numbers of fields", "line 38"]),
    (HEADER + ROWS.replace("\n", "\t\n"), ["rows have 4 fields but its header names 3"]),
    (HEADER.replace("\n", "\ttimestamp:float\n") + ROWS.replace("\n", "\t1\n"),
     ["names the column 'timestamp' twice"]),
    ("\ufeff" + HEADER + ROWS, ["byte-order mark", "utf-8-sig"]),
    (HEADER.replace("item_id:token", "item_id:token_seq") + ROWS, ["item_id:token (one id per row)"]),
    (HEADER, ["no interactions"]),
    ("", ["is empty"]),
    (HEADER.replace("\t", ",") + ROWS.replace("\t", ","), ["not separated by", "','"]),
    (HEADER.replace("timestamp:float", "timestamp:token") + ROWS, ["timestamp:float"]),
    (HEADER + ROWS + "1\t6\t5\n", ["1 row(s) repeat an earlier row exactly (line(s) 38)",
                                   "rm_dup_inter"]),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", ["not a text file"]),
])
def test_unusable_data_files_are_explained(capsys, tiny, workdir, content, fragments):
    os.makedirs(workdir / "data" / "bad")
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(workdir / "data" / "bad" / "bad.inter", mode) as f:
        f.write(content)
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=bad",
                        *flags(dict(tiny, data_path=workdir / "data")))
    assert_one_paragraph(code, err, *fragments)
    assert not os.path.exists(workdir / "runs")


def test_repeated_rows_pass_when_rm_dup_inter_removes_them(capsys, tiny, workdir):
    os.makedirs(workdir / "data" / "dup")
    (workdir / "data" / "dup" / "dup.inter").write_text(HEADER + ROWS + "1\t6\t5\n")
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=dup", "--rm_dup_inter=first",
                        *flags(dict(tiny, data_path=workdir / "data", epochs=1)))
    assert code == 0, err


def test_a_folder_or_a_broken_link_in_place_of_the_file(capsys, tiny, workdir):
    os.makedirs(workdir / "data" / "dir" / "dir.inter")
    os.makedirs(workdir / "data" / "link")
    os.symlink("/nonexistent/file", workdir / "data" / "link" / "link.inter")
    for name, fragment in (("dir", "is a folder"), ("link", "is a broken link")):
        code, err = cli_run(capsys, "--model=SASRec", f"--dataset={name}",
                            *flags(dict(tiny, data_path=workdir / "data")))
        assert_one_paragraph(code, err, fragment)
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=dri",
                        *flags(dict(tiny, data_path=workdir / "data")))
    assert_one_paragraph(code, err, "did you mean 'dir'?")


def test_a_misnamed_file_is_named_and_nobody_is_told_to_delete_their_data(capsys, tiny, workdir):
    os.makedirs(workdir / "data" / "shop")
    (workdir / "data" / "shop" / "interactions.tsv").write_text(HEADER + ROWS)
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=shop",
                        *flags(dict(tiny, data_path=workdir / "data")))
    assert_one_paragraph(code, err, "interactions.tsv", "rename it to shop.inter",
                         "recbole-hybrid convert")
    assert "remove" not in err and "not in this version" not in err


def test_a_truncated_or_binary_source_in_convert(capsys, workdir):
    whole = gzip.compress(b"u1 i1 i2 i3\nu2 i2 i3 i4\n" * 50)
    (workdir / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    assert cli.main(["convert", "--format=sequences", "--source", str(workdir / "cut.txt.gz"),
                     "--name", "cut", "--data_path", str(workdir / "d")]) == 2
    assert "not a complete gzip file" in capsys.readouterr().err
    (workdir / "bin.txt").write_bytes(b"u1 \xff\xfe i1\n")
    assert cli.main(["convert", "--format=sequences", "--source", str(workdir / "bin.txt"),
                     "--name", "bin", "--data_path", str(workdir / "d")]) == 2
    assert "not utf-8 text" in capsys.readouterr().err
    assert not glob.glob(str(workdir / "d" / "*" / "*"))  # nothing half-written


# ---- outputs that cannot be written ---------------------------------------------------------

def test_a_file_in_the_way_of_the_output_folder(capsys, sasrec, workdir):
    (workdir / "runs").write_text("my notes")
    code, err = cli_run(capsys, *sasrec, "--output_dir=runs/sub")
    assert_one_paragraph(code, err, "is a file, not a folder")
    assert (workdir / "runs").read_text() == "my notes"


@contextlib.contextmanager
def read_only(folder):
    """`folder` made read-only for this process: chmod for a user, the immutable flag for root."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root and no immutable flag here: nothing is read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


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

    from recbole_hybrid.settings import build_config

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
    assert_one_paragraph(code, err, "is not a RecBole checkpoint")


# ---- losses and devices -----------------------------------------------------------------------

def test_bpr_loss_trains_the_plugin_models(data_path, workdir):
    result = runner.run("MaTrRec", "tiny", overrides={
        "data_path": data_path, "loss_type": "BPR", "epochs": 1, "hidden_size": 16, "d_state": 8,
        "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 128,
        "show_progress": False}, output_dir=str(workdir / "runs"))
    assert result["test_result"]["ndcg@10"] >= 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU these implementations can run")
@pytest.mark.parametrize("impl", ["kernel", "triton"])
def test_a_gpu_implementation_on_a_cpu_is_a_config_error(capsys, tiny, workdir, impl, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, err = cli_run(capsys, "--model=Mamba4Rec", "--dataset=tiny", f"--mamba_impl={impl}",
                        *flags({k: v for k, v in tiny.items() if k not in ("n_layers", "n_heads",
                                                                          "inner_size")}))
    assert_one_paragraph(code, err, f"mamba_impl='{impl}'")


# ---- the one error path -----------------------------------------------------------------------

def test_an_unforeseen_error_is_an_internal_error_with_its_traceback_in_a_file(capsys, sasrec,
                                                                                monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "run", broken)
    code, err = cli_run(capsys, *sasrec)
    assert code == 1 and "Traceback" not in err
    assert "internal error: RuntimeError: boom" in err
    path = err.split("the traceback is in ")[1].split(" (--debug")[0]
    assert "Traceback" in open(path).read() and "boom" in open(path).read()
    code, err = cli_run(capsys, *sasrec, "--debug")
    assert code == 1 and "Traceback" in err


# ---- searches and grids -----------------------------------------------------------------------

def test_a_second_hyperopt_search_never_overwrites_the_first(tiny, workdir):
    params = workdir / "space.hyper"
    params.write_text("learning_rate choice [0.01]\n")
    output = workdir / "search"
    os.makedirs(output)
    for name in ("best.yaml", "trials.jsonl"):
        (output / name).write_text(f"the first search's {name}")
    with pytest.raises(UserError, match="holds an earlier search"):
        tune("SASRec", "tiny", str(params), overrides=tiny, output=str(output), log=lambda _: None)
    for name in ("best.yaml", "trials.jsonl"):
        assert (output / name).read_text() == f"the first search's {name}"


def test_a_params_file_with_an_unknown_or_impossible_parameter(tiny, workdir):
    params = workdir / "space.hyper"
    params.write_text("learnig_rate choice [0.01,0.001]\n")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        tune("SASRec", "tiny", str(params), overrides=tiny, output=str(workdir / "s"),
             log=lambda _: None)
    params.write_text("epochs choice [2,0]\n")
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        tune("SASRec", "tiny", str(params), overrides=tiny, output=str(workdir / "s"),
             log=lambda _: None)
    assert not os.path.exists(workdir / "s")


def test_params_files_that_cannot_be_read(tiny, workdir):
    params = workdir / "space.hyper"
    for content, fragment in ((b"\x89PNG\x00\xff", "not a text (utf-8) file"),
                              (b"learning_rate choice [0.1]\nlearning_rate choice [0.2]\n",
                               "learning_rate is given twice"),
                              (b"n_layers quniform 1,3,abc\n", "expected numbers")):
        params.write_bytes(content)
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            tune("SASRec", "tiny", str(params), overrides=tiny, output=str(workdir / "s"))
    params.write_text("learning_rate choice [0.01]\n")
    with pytest.raises(UserError, match="--resume: no Ray Tune experiment"):
        tune("SASRec", "tiny", str(params), tool="ray", resume=True, overrides=tiny,
             output=str(workdir / "s"))
    assert not os.path.exists(workdir / "s")


def test_a_search_whose_every_trial_fails_says_so(tiny, workdir):
    params = workdir / "space.hyper"
    params.write_text("n_heads choice [3,5]\n")  # neither divides hidden size 16
    with pytest.raises(UserError, match="every trial failed .*SASRec cannot be built"):
        tune("SASRec", "tiny", str(params), overrides=tiny, output=str(workdir / "s"),
             log=lambda _: None)
    table = (workdir / "s" / "trials.md").read_text()
    assert "SASRec cannot be built" in table
    assert "| 3 | failed |" in table and "| 5 | failed |" in table  # each value, tried


def test_grid_files_with_wrong_shapes_or_names(capsys, tiny, workdir):
    grid = workdir / "grid.yaml"
    for content, fragment in (({"models": ["SASRec"], "datasets": ["tiny"], "settings": [1, 2]},
                               "`settings` must be a dict"),
                              ({"models": ["SASRec"], "datasets": ["tiny"],
                                "model_settings": {"SASRecc": {"n_layers": 1}}},
                               "Did you mean 'SASRec'"),
                              ({"models": ["SASRec"], "datasets": ["tiny"],
                                "baselines": ["GRU4Recc"]}, "Did you mean 'GRU4Rec'"),
                              ({"models": ["SASRec"], "datasets": ["tiny"], "metrics": []},
                               "`metrics` is an empty list")):
        grid.write_text(yaml.safe_dump(content))
        assert cli.main(["compare", "--grid", str(grid)]) == 2
        assert fragment in capsys.readouterr().err
    assert cli.main(["compare", "--report", str(workdir / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_grid_with_a_failed_cell_ends_with_exit_code_2(capsys, tiny, workdir):
    settings = {k: v for k, v in tiny.items() if k not in ("n_layers", "n_heads", "inner_size")}
    grid = workdir / "grid.yaml"
    grid.write_text(yaml.safe_dump({"models": ["Mamba4Rec"], "datasets": ["tiny"],
                                    "metrics": ["ndcg@10"],
                                    "settings": {**settings, "epochs": 1, "learning_rate": 100}}))
    assert cli.main(["compare", "--grid", str(grid), "--output", str(workdir / "out")]) == 2
    err = capsys.readouterr().err
    assert "1 of 1 cells failed" in err and "training diverged" in err
    records = [json.loads(line) for line in (workdir / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed"]  # recorded, tried again next time


def test_report_skips_records_that_are_not_records(tiny, workdir, capsys):
    from recbole_hybrid.compare import RESULTS_FILE, report_only

    output = workdir / "cmp"
    os.makedirs(output)
    grid = Grid(models=["SASRec"], datasets=["tiny"], baselines=[], metrics=["hit@10"])
    (output / "grid.json").write_text(json.dumps({"models": ["SASRec"], "datasets": ["tiny"],
                                                  "baselines": [], "metrics": ["hit@10"]}))
    (cell,) = grid.cells()
    good = {"model": "SASRec", "dataset": "tiny", "status": "ok", "settings_key":
            grid.settings_key(cell), "test_result": {"hit@10": 0.5}, "best_valid_result": {}}
    bad = [{**good, "test_result": "oops"}, {**good, "status": 7}]
    (output / RESULTS_FILE).write_text("\n".join(json.dumps(r) for r in [good, *bad]) + "\n")
    report_only(str(output))
    assert "| tiny | hit@10 | 0.5000 |" in (output / "table.md").read_text()
    assert cli.main(["compare", "--report", str(output)]) == 0
    assert "lines 2, 3 of" in capsys.readouterr().out
    # metric names in any case; one that was not measured, a damaged grid.json, a folder that
    # cannot be written: one paragraph each
    assert cli.main(["compare", "--report", str(output), "--metrics", "HIT@10"]) == 0
    assert cli.main(["compare", "--report", str(output), "--metrics", "recall@10"]) == 2
    assert "recall@10 not measured" in capsys.readouterr().err
    with read_only(output):
        assert cli.main(["compare", "--report", str(output)]) == 2
        assert "error: " in capsys.readouterr().err
    (output / "grid.json").write_text('{"models": ["SASRec"], "datasets"')
    assert cli.main(["compare", "--report", str(output)]) == 2
    assert "grid.json is damaged" in capsys.readouterr().err


def test_convert_refuses_unsafe_names_and_its_own_source_and_leaves_no_folder(capsys, workdir):
    source = workdir / "seq.txt"
    source.write_text("u1 i1 i2\nu2 i2 i3\nu1 i3 i4\n")
    for name in ("../escape", "", ".hidden"):
        assert cli.main(["convert", "--format=sequences", "--source", str(source), "--name", name,
                         "--data_path", str(workdir / "d")]) == 2
        assert "a dataset name is one folder name" in capsys.readouterr().err
    (workdir / "bad.txt").write_text("u1\n")
    assert cli.main(["convert", "--format=sequences", "--source", str(workdir / "bad.txt"),
                     "--name", "bad", "--data_path", str(workdir / "d")]) == 2
    assert not os.path.exists(workdir / "d" / "bad")
    assert cli.main(["convert", "--format=sequences", "--source", str(source), "--name", "ok",
                     "--data_path", str(workdir / "d")]) == 0
    rows = (workdir / "d" / "ok" / "ok.inter").read_text().splitlines()[1:]
    assert [r for r in rows if r.startswith("u1\t")] == ["u1\ti1\t0", "u1\ti2\t1", "u1\ti3\t2",
                                                          "u1\ti4\t3"]  # a user's second line goes on
    target = workdir / "d" / "ok" / "ok.inter"
    before = target.read_text()
    assert cli.main(["convert", "--format=sequences", "--source", str(target), "--name", "ok",
                     "--data_path", str(workdir / "d"), "--force"]) == 2
    assert target.read_text() == before


def test_a_grid_whose_models_do_not_compute_the_table_metrics(tiny):
    grid = Grid(models=["SASRec"], datasets=["tiny"], metrics=["recall@20"],
                settings={**tiny, "metrics": ["Recall", "NDCG"], "topk": [10]})
    with pytest.raises(ConfigError, match="recall@20, which SASRec does not compute"):
        check_grid(grid)
    assert ranks({"SASRec": 0.1, "GRU4Rec": None}) == {}  # a lone value is nobody's "best"


def test_a_port_in_time_wait_is_free_for_the_next_run():
    with socket.socket() as server:  # the previous run's rank 0 (torch's store uses SO_REUSEADDR)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps the port in TIME_WAIT
        client.close()
    check_port_free("127.0.0.1", port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="not free"):
            check_port_free("127.0.0.1", busy.getsockname()[1])


# ---- signals on real processes ----------------------------------------------------------------

def descendants(pid):
    """Every live process whose chain of parents leads to `pid`."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(stat.split("/")[2])] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout=120, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def long_sasrec(tiny):
    return ["--model=SASRec", "--dataset=tiny",
            *flags(dict(tiny, epochs=300, stopping_step=300))]


def test_sigterm_of_a_run_names_the_checkpoint_to_resume_from(tiny, workdir):
    process = subprocess.Popen([sys.executable, SCRIPT, *long_sasrec(tiny)], cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: glob.glob(str(workdir / "runs" / "*" / "*.pth")), what="a checkpoint")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    (checkpoint,) = glob.glob(str(workdir / "runs" / "*" / "*.pth"))
    assert f"--resume={checkpoint}" in err and "Traceback" not in err


def test_killing_compare_kills_its_cell_and_the_next_compare_can_run(tiny, workdir):
    grid = workdir / "grid.yaml"
    grid.write_text(yaml.safe_dump({"models": ["SASRec"], "datasets": ["tiny"],
                                    "metrics": ["hit@10"],
                                    "settings": {**tiny, "epochs": 300, "stopping_step": 300}}))
    command = [sys.executable, "-m", "recbole_hybrid", "compare", "--grid", str(grid),
               "--output", str(workdir / "out")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: glob.glob(str(workdir / "out" / "runs" / "*" / "*.pth")),
               what="the cell's first checkpoint")
    cells = descendants(process.pid)
    assert cells
    process.kill()  # SIGKILL: no handler of the parent runs
    process.wait()
    wait_until(lambda: not any(alive(pid) for pid in cells), timeout=30,
               what="the orphaned cell to stop")
    again = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: len(glob.glob(str(workdir / "out" / "runs" / "*"))) == 2,
               what="the second compare's cell")  # the lock did not outlive its owner
    again.send_signal(signal.SIGTERM)
    printed, _ = again.communicate(timeout=60)
    assert again.returncode == 130 and "run the same command again to resume" in printed
    assert not descendants(again.pid)


def test_sigterm_of_a_multi_process_run_stops_every_worker(tiny, workdir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, SCRIPT, *long_sasrec(tiny), "--nproc=2",
                                f"--port={port}"], cwd=workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_until(lambda: glob.glob(str(workdir / "runs" / "*" / "*.pth")), what="a checkpoint")
    workers = descendants(process.pid)
    assert len(workers) >= 2
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=30,
               what="the workers to stop")


def test_ctrl_c_stops_a_hyperopt_search_and_keeps_its_finished_trials(tiny, workdir):
    params = workdir / "space.hyper"
    params.write_text("learning_rate choice [0.01,0.005,0.002,0.001]\n")
    output = workdir / "search"
    process = subprocess.Popen(
        [sys.executable, "-m", "recbole_hybrid", "tune", "--model=SASRec", "--dataset=tiny",
         "--params_file", str(params), "--output", str(output),
         *flags(dict(tiny, epochs=40, stopping_step=40))],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials_file = output / "trials.jsonl"
    wait_until(lambda: trials_file.exists() and trials_file.read_text().count("\n") >= 1,
               timeout=300, what="the first trial")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err
    records = [json.loads(line) for line in trials_file.read_text().splitlines()]
    assert 1 <= len(records) < 4 and all(r["status"] == "ok" for r in records)
    assert (output / "trials.md").exists() and (output / "best.yaml").exists()
    assert not descendants(process.pid)
