"""`recbole-hybrid compare`: grid, per-cell processes, resumable results file, reports."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import TINY_CELL, write_tiny_dataset
from recbole_hybrid.compare import rows
from recbole_hybrid.compare.writers import latex, markdown
from recbole_hybrid.utils import jsonl
from recbole_hybrid.cli import main
from recbole_hybrid.compare import RESULTS_FILE, Grid, compare, load_grid, read_records
from recbole_hybrid.errors import ConfigError, UnknownModelError, UserError


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("grid-data"))
    write_tiny_dataset(folder, "tiny_a", seed=1)
    write_tiny_dataset(folder, "tiny_b", seed=2)
    return folder


def tiny_grid(data_path, models=("SASRec", "MaTrRec"), datasets=("tiny_a", "tiny_b"), **extra):
    return Grid(models=list(models), datasets=list(datasets),
                settings={**TINY_CELL, "data_path": data_path, **extra},
                baselines=["SASRec"])


def lines(output):
    with open(os.path.join(output, RESULTS_FILE)) as f:
        return f.read().splitlines()


@pytest.mark.slow
def test_grid_records_every_cell_and_a_second_run_skips_them(two_datasets, workdir):
    grid, output = tiny_grid(two_datasets), str(workdir / "cmp")
    log = []
    records = compare(grid, output, log=log.append)
    assert sorted(records) == sorted((m, d, None) for d in grid.datasets for m in grid.models)
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
        assert 0 <= record["test_result"]["ndcg@10"] <= record["test_result"]["recall@10"] <= 1
        assert record["parameters"] > 0 and record["epochs_run"] == 1
        assert record["train_seconds_per_epoch"] > 0 and record["test_inference_seconds"] > 0
        assert record["peak_memory_mb"] > 0 and record["device"] == "cpu"
        assert os.path.isfile(record["results_file"]) and os.path.isfile(record["log_file"])
    assert any("[4/4]" in line and "remaining" in line for line in log)
    for name in ("table.md", "table.csv", "table.tex", "metrics.png", "efficiency.png"):
        assert os.path.getsize(os.path.join(output, name)) > 0
    with open(os.path.join(output, "metrics.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    before, log = lines(output), []
    compare(grid, output, log=log.append)
    assert lines(output) == before and "4 already done" in log[0] and "0 to run" in log[0]

    one = tiny_grid(two_datasets, models=["SASRec"], datasets=["tiny_a"])
    compare(one, output, rerun=True, log=lambda _: None)
    assert len(lines(output)) == len(before) + 1


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_grid_goes_on(two_datasets, workdir):
    # every setting passes the checks, but training diverges on tiny_a (loss NaN)
    grid = tiny_grid(two_datasets, models=["Mamba4Rec"])
    grid.dataset_settings = {"tiny_a": {"learning_rate": 100}}
    output = str(workdir / "cmp")
    records = compare(grid, output, log=lambda _: None)
    failed, ok = records[("Mamba4Rec", "tiny_a", None)], records[("Mamba4Rec", "tiny_b", None)]
    assert failed["status"] == "failed" and "training diverged" in failed["error"]
    assert "Traceback" not in failed["error"]  # a user error is its message
    assert ok["status"] == "ok"
    with open(os.path.join(output, "table.md")) as f:
        table = f.read()
    assert "Cells without a result:" in table and "Mamba4Rec on tiny_a" in table
    # failed cells are tried again by the next run, finished ones are not
    log = []
    compare(grid, output, log=log.append)
    assert "1 already done" in log[0] and "1 to run" in log[0]


def test_a_missing_dataset_stops_the_grid_before_any_cell(two_datasets, workdir):
    grid = tiny_grid(two_datasets, models=["SASRec"], datasets=["tiny_a", "no_such_data"])
    with pytest.raises(UserError, match="Dataset 'no_such_data' not found"):
        compare(grid, str(workdir / "cmp"), log=lambda _: None)
    assert not os.path.exists(workdir / "cmp")


@pytest.mark.slow
def test_a_killed_grid_resumes_without_redoing_finished_cells(two_datasets, workdir):
    grid_file = workdir / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "models": ["SASRec", "GRU4Rec"], "datasets": ["tiny_a", "tiny_b"],
        "settings": {**TINY_CELL, "data_path": two_datasets},
    }))
    output = workdir / "out"
    command = [sys.executable, "-m", "recbole_hybrid", "compare", "--grid", str(grid_file),
               "--output", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (output / RESULTS_FILE).exists() and len(lines(str(output))) >= 1
    ):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    printed, _ = process.communicate(timeout=60)
    assert process.returncode == 130 and "run the same command again to resume" in printed
    finished = [json.loads(line)["model"] + "/" + json.loads(line)["dataset"]
                for line in lines(str(output))]
    assert 1 <= len(finished) < 4

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} already done" in resumed.stdout
    cells = [json.loads(line)["model"] + "/" + json.loads(line)["dataset"]
             for line in lines(str(output))]
    assert sorted(cells) == sorted(f"{m}/{d}" for m in ("SASRec", "GRU4Rec")
                                   for d in ("tiny_a", "tiny_b"))  # each cell exactly once


def test_a_changed_setting_makes_a_cell_run_again():
    grid = Grid(models=["SASRec"], datasets=["d"], settings={"epochs": 2})
    changed = Grid(models=["SASRec"], datasets=["d"], settings={"epochs": 3})
    (cell,), (cell_changed,) = grid.cells(), changed.cells()
    assert grid.settings_key(cell) != changed.settings_key(cell_changed)
    per_model = Grid(models=["SASRec", "GRU4Rec"], datasets=["d"], settings={"epochs": 2},
                     model_settings={"SASRec": {"n_layers": 2}}, dataset_settings={"d": {"epochs": 5}})
    overrides = {cell.model: cell.overrides for cell in per_model.cells()}
    assert overrides == {"SASRec": {"epochs": 5, "n_layers": 2}, "GRU4Rec": {"epochs": 5}}


def test_grid_file_and_flags(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("models: [SASRec]\ndatasets: [a]\nsettings: {epochs: 3}\n")
    grid = load_grid(str(path), datasets=["b"], overrides={"learning_rate": "0.01"})
    assert grid.models == ["SASRec"] and grid.datasets == ["b"]
    assert grid.settings == {"epochs": 3, "learning_rate": "0.01"}
    assert "MaTrRec" in load_grid(datasets=["a"]).models  # the paper's list by default
    path.write_text("model: [SASRec]\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_grid(str(path))
    with pytest.raises(UnknownModelError, match="Did you mean 'SASRec'"):
        load_grid(models=["SASRc"], datasets=["a"])
    with pytest.raises(UserError, match="no datasets"):
        load_grid(models=["SASRec"])
    assert main(["compare", "--models", "NoSuchModel", "--datasets", "a"]) == 2


def test_a_torn_last_line_is_ignored_and_the_next_record_stays_readable(tmp_path):
    record = {"model": "SASRec", "dataset": "a", "status": "ok", "settings_key": "k",
              "test_result": {"ndcg@10": 0.5}, "best_valid_result": {"ndcg@10": 0.4}}
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(record) + '\n{"model": "GR')  # a crash while writing
    assert read_records(str(tmp_path)) == [record]
    jsonl.append(str(path), {**record, "dataset": "b"})
    assert read_records(str(tmp_path)) == [record, {**record, "dataset": "b"}]
    path.write_text("[]\n42\n" + json.dumps({"model": "x"}) + "\n" + json.dumps(record) + "\n")
    assert read_records(str(tmp_path)) == [record]  # valid JSON that is not a record: skipped


def test_markdown_marks_best_and_second_shows_published_and_improvement():
    grid = Grid(models=["SASRec", "Mamba4Rec", "MaTrRec"], datasets=["amazon-office-products"],
                baselines=["SASRec", "Mamba4Rec"], metrics=["recall@10"])
    records = {(m, "amazon-office-products", None): {"status": "ok", "test_result": {"recall@10": v}}
               for m, v in [("SASRec", 0.09), ("Mamba4Rec", 0.08), ("MaTrRec", 0.10)]}
    table = markdown.text(grid, records, list(rows.metric_rows(grid, records)))
    row = next(line for line in table.splitlines() if "| recall@10 |" in line)
    assert "<u>0.0900 (0.0977)</u>" in row and "| 0.0800 (0.0864) |" in row
    assert "**0.1000 (0.1019)**" in row
    assert "+11.1%" in row and "+25.0%" in row
    tex = latex.text(grid, records, list(rows.metric_rows(grid, records)))
    assert "\\textbf{0.1000}" in tex and "\\underline{0.0900}" in tex


def test_stale_partial_files_are_removed_and_live_ones_kept(tmp_path):
    from recbole_hybrid.utils.files import remove_stale_partials

    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "runs" / "r").mkdir(parents=True)
    stale = [tmp_path / f"table.md.{gone.pid}.partial",
             tmp_path / "runs" / "r" / f".results.json.{gone.pid}.partial",
             tmp_path / f"per_user.npz.{gone.pid}.partial.npz"]
    kept = [tmp_path / f"metrics.png.{os.getpid()}.partial",  # a live process writes it
            tmp_path / "notes.partial", tmp_path / "table.md"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_partials(str(tmp_path))) == sorted(map(str, stale))
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
