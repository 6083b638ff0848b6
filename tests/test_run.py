"""The run script as a user runs it: flags, config precedence, results, errors, resume."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import recbole.utils
import torch
import yaml
from recbole.quick_start import load_data_and_model

from conftest import SCRIPT, flags
from recbole_hybrid.errors import InvalidDatasetError, UserError
from recbole_hybrid.config.builder import build_config



def run_script(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_sasrec_one_epoch_prints_metrics_and_its_checkpoint_reloads(tiny, workdir):
    done = run_script("--model=SASRec", "--dataset=tiny", *flags(dict(tiny, epochs=1)), cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    for metric in ("hit@10", "ndcg@10", "mrr@10"):
        assert metric in done.stdout
    (results_file,) = glob.glob(str(workdir / "runs" / "SASRec-tiny-*" / "results.json"))
    result = json.load(open(results_file))
    assert result["model"] == "SASRec" and result["dataset"] == "tiny"
    assert set(result["test_result"]) == {"hit@10", "ndcg@10", "mrr@10"}
    assert f"{result['test_result']['ndcg@10']:.4f}" in done.stdout
    assert os.path.dirname(result["checkpoint"]) == os.path.dirname(results_file)

    # The best checkpoint reloads in this process (torch 2.13) and evaluates to the same test result.
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    trainer = recbole.utils.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(result["test_result"], abs=1e-4)


@pytest.mark.slow
def test_unknown_model_is_one_clear_paragraph(workdir):
    done = run_script("--model=NoSuchModel", cwd=workdir)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = done.stderr.strip()
    assert message.startswith("error: Unknown model 'NoSuchModel'") and "\n" not in message
    assert "SASRec" in message and "GRU4Rec" in message


@pytest.mark.slow
def test_missing_dataset_offline_is_a_clear_message(workdir):
    for dataset in ("no-such-dataset", "amazon-beauty"):  # unknown name; known but offline
        done = run_script("--model=SASRec", f"--dataset={dataset}", f"--data_path={workdir}/d",
                          cwd=workdir)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"Dataset '{dataset}' not found" in done.stderr
        assert f"{dataset}.inter" in done.stderr and "timestamp:float" in done.stderr
    assert not os.path.exists(workdir / "runs")  # no empty run folders left behind


def test_missing_timestamp_column_is_a_clear_error(tmp_path):
    from conftest import write_tiny_dataset

    write_tiny_dataset(str(tmp_path), name="untimed", with_timestamp=False)
    config = build_config("SASRec", "untimed", overrides={"data_path": str(tmp_path)})
    from recbole_hybrid.data.atomic_files import check_dataset

    with pytest.raises(InvalidDatasetError, match="no column 'timestamp'"):
        check_dataset(config)


def test_config_precedence(tiny, workdir):
    os.makedirs(workdir / "properties" / "dataset")
    layers = {
        "properties/dataset/tiny.yaml": {"learning_rate": 0.1, "train_batch_size": 11, "hidden_size": 8},
        "first.yaml": {"learning_rate": 0.2, "train_batch_size": 22},
        "second.yaml": {"learning_rate": 0.3},
    }
    for path, content in layers.items():
        yaml.safe_dump(content, open(workdir / path, "w"))
    config = build_config("SASRec", "tiny", ["first.yaml", "second.yaml"],
                          {"data_path": tiny["data_path"], "learning_rate": "0.4"})
    assert config["n_layers"] == 2  # SASRec's own default
    assert config["hidden_size"] == 8  # the dataset yaml beats the model default
    assert config["train_batch_size"] == 22  # a config file beats the dataset yaml
    assert config["learning_rate"] == 0.4  # the command line beats everything
    without_cmd = build_config("SASRec", "tiny", ["first.yaml", "second.yaml"])
    assert without_cmd["learning_rate"] == 0.3  # later config files beat earlier ones


def test_defaults_a_researcher_expects(tiny):
    ce = build_config("SASRec", "tiny", overrides={"data_path": tiny["data_path"]})
    assert ce["train_neg_sample_args"]["distribution"] == "none"
    assert ce["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    assert ce["show_progress"] is False  # stderr is not a terminal under pytest
    bpr = build_config("SASRec", "tiny", overrides={"data_path": tiny["data_path"], "loss_type": "BPR"})
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    with pytest.raises(UserError, match="config file not found"):
        build_config("SASRec", "tiny", ["missing.yaml"])
    with pytest.raises(UserError, match="no_such_metric"):
        build_config("SASRec", "tiny", overrides={"metrics": "['no_such_metric']"})


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(tiny, workdir):
    args = ["--model=SASRec", "--dataset=tiny", *flags(dict(tiny, epochs=200, stopping_step=200))]
    process = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        checkpoints = []
        while not checkpoints and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
            checkpoints = glob.glob(str(workdir / "runs" / "*" / "*.pth"))
        assert checkpoints, "no checkpoint was written"
        time.sleep(1.0)  # a few more epochs
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed mid-training, not finished
    (checkpoint,) = checkpoints
    assert not glob.glob(str(workdir / "runs" / "*" / "results.json"))

    epoch = torch.load(checkpoint, weights_only=False)["epoch"]
    done = run_script(f"--resume={checkpoint}", f"--epochs={epoch + 3}", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = glob.glob(str(workdir / "runs" / "*" / "results.json"))
    result = json.load(open(results_file))
    assert result["resumed_from"] == checkpoint and result["checkpoint"] == checkpoint
    log = open(result["log_file"]).read()
    assert f"Resume training from epoch {epoch + 1}" in log
    assert f"epoch {epoch + 2} training" in log and f"epoch {epoch + 3} training" not in log


def test_unrecognised_arguments_are_explained(workdir):
    done = run_script("--model=SASRec", "epochs=3", cwd=workdir)
    assert done.returncode == 2 and "--key=value" in done.stderr


def test_console_entry_point_runs(workdir):
    done = subprocess.run([sys.executable, "-m", "recbole_hybrid", "run", "--help"],
                          capture_output=True, text=True, cwd=workdir)
    assert done.returncode == 0 and "--config_files" in done.stdout


def _peak_of_a_spawned_process(queue):
    from recbole_hybrid.quick_start.runner import _peak_memory_mb

    queue.put(_peak_memory_mb("cpu"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's ru_maxrss")
def test_the_cpu_peak_memory_of_a_cell_is_its_own_not_its_parents():
    """A grid process that ran a search in-process has a large peak; a cell it spawns after
    must report its own (Linux's ru_maxrss carries the parent's peak across fork and exec)."""
    import multiprocessing

    held = bytearray(1536 * 2**20)
    for i in range(0, len(held), 4096):  # resident, page by page
        held[i] = 1
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_of_a_spawned_process, args=(queue,))
    process.start()
    peak = queue.get(timeout=120)
    process.join()
    del held
    assert 50 < peak < 1536  # torch and RecBole imported: some hundreds of MiB
