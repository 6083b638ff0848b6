"""`recbole-hybrid compare --tune`: every model searched with the same budget before its seeds
run, both stages resumable, the tables drawn again from the files alone."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import TINY_SASREC, write_tiny_dataset
from recbole_hybrid.cli import main
from recbole_hybrid.compare import RESULTS_FILE
from recbole_hybrid.compare.searches import SEARCHES_FILE

CELL = {**TINY_SASREC, "epochs": 2, "embedding_size": 16, "metrics": ["Recall", "NDCG"],
        "topk": [5, 10], "seed": 7}
SPACE = "learning_rate choice [0.01,0.003,0.001]\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tuned-data"))
    write_tiny_dataset(folder, "tiny_a", seed=1)
    return folder


def grid_file(folder, data, models=("SASRec", "GRU4Rec"), space=SPACE, **tune):
    """A grid of `models` on tiny_a whose models search `space`."""
    params_files = {}
    for model in models:
        path = folder / f"{model}.hyper"
        path.write_text(space)
        params_files[model] = str(path)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "models": list(models), "datasets": ["tiny_a"], "baselines": [models[0]],
        "ours": models[-1], "settings": {**CELL, "data_path": data},
        "tune": {"params_files": params_files, **tune}}))
    return str(path)


def run_folders(output):
    return sorted(glob.glob(os.path.join(output, "**", "results.json"), recursive=True))


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_every_model_gets_its_trials_then_every_seed_runs_the_chosen_setting(
        data, workdir, capsys):
    output = str(workdir / "cmp")
    command = ["compare", "--grid", grid_file(workdir, data), "--tune", "--max_evals", "2",
               "--seeds", "2", "--output", output]
    assert main(command) == 0
    searches = {r["model"]: r for r in records(os.path.join(output, SEARCHES_FILE))}
    assert sorted(searches) == ["GRU4Rec", "SASRec"]
    cells = records(os.path.join(output, RESULTS_FILE))
    assert len(cells) == 4 and all(c["status"] == "ok" for c in cells)
    with open(os.path.join(output, "table.md")) as f:
        table = f.read()
    for model, search in searches.items():
        with open(os.path.join(output, search["folder"], "trials.csv"), newline="") as f:
            trials = list(csv.DictReader(f))
        assert len(trials) == 2 == search["trials"]  # the same budget for every model
        assert search["epochs"] == 4 and search["seconds"] > 0  # 2 trials x 2 epochs
        best = max(trials, key=lambda t: float(t["best valid ndcg@10"]))
        assert search["params"] == {"learning_rate": float(best["learning_rate"])}
        seeds = [c for c in cells if c["model"] == model]
        assert sorted(c["seed"] for c in seeds) == [7, 8]
        assert all(c["overrides"]["learning_rate"] == best["learning_rate"] for c in seeds)
        assert f"| tiny_a | {model} | learning_rate={best['learning_rate']} | " in table
    assert "a hyperopt random search of 2 trials per dataset" in table
    with open(os.path.join(output, "tuning.csv"), newline="") as f:
        assert [row["model"] for row in csv.DictReader(f)] == ["SASRec", "GRU4Rec"]

    trained = run_folders(output)
    capsys.readouterr()
    assert main(command) == 0  # a second run trains nothing
    printed = capsys.readouterr().out
    assert "2 searches (2 trials each), 2 already done" in printed
    assert "4 cells, 4 already done" in printed
    assert run_folders(output) == trained

    os.remove(os.path.join(output, "tuning.csv"))
    assert main(["compare", "--report", output]) == 0
    with open(os.path.join(output, "table.md")) as f:
        assert f.read() == table  # byte for byte, from the files alone
    assert os.path.isfile(os.path.join(output, "tuning.csv"))


def test_bad_tuning_input_is_one_paragraph_before_anything_trains(data, workdir, capsys):
    output = workdir / "cmp"

    def refused(*command):
        capsys.readouterr()
        assert main(["compare", *command, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert not output.exists()  # nothing trained, nothing written
        return err

    flags = ["--datasets", "tiny_a", f"--data_path={data}", "--epochs=1"]
    err = refused("--models", "SASRec,Caser", "--tune", *flags)
    assert "Caser has no search space: properties/hyper/Caser.hyper does not exist" in err
    err = refused("--grid", grid_file(workdir, data, space="learnin_rate choice [0.01]\n"), "--tune")
    assert "learnin_rate" in err and "learning_rate" in err
    err = refused("--models", "SASRec", "--max_evals", "0", *flags)
    assert "--max_evals=0: must be at least 1" in err
    assert "tune max_evals" in refused("--grid", grid_file(workdir, data, max_evals=0))
    assert "choose one of hyperopt, ray" in refused("--grid", grid_file(workdir, data, tool="optuna"))
    assert "choose one of hyperopt, ray" in refused("--grid", grid_file(workdir, data, tool=["ray"]))
    assert "needs choices only" in refused(
        "--grid", grid_file(workdir, data, space="learning_rate loguniform -7,-4\n"),
        "--algo", "exhaustive")
    path = grid_file(workdir, data, algo="exhaustive")
    (workdir / "GRU4Rec.hyper").write_text("learning_rate choice [0.01,0.003]\n")
    assert "SASRec 3, GRU4Rec 2 trials" in refused("--grid", path)
    missing = str(workdir / "nowhere.hyper")
    path = workdir / "grid.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["tune"]["params_files"]["SASRec"] = missing
    path.write_text(yaml.safe_dump(spec))
    assert f"SASRec has no search space: {missing} does not exist" in refused("--grid", str(path))


@pytest.mark.slow
def test_a_grid_killed_in_its_search_stage_keeps_the_finished_trials(data, workdir):
    output = workdir / "cmp"
    space = "learning_rate choice [0.01,0.005,0.002,0.001]\n"
    command = [sys.executable, "-m", "recbole_hybrid", "compare", "--grid",
               grid_file(workdir, data, models=("SASRec",), space=space, algo="exhaustive"),
               "--output", str(output), "--epochs=30", "--stopping_step=30"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not glob.glob(str(output / "searches" / "*" / "trials.jsonl")):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    printed, _ = process.communicate(timeout=60)
    assert process.returncode == 130, printed[-2000:]
    assert "keeps its finished trials" in printed and "Traceback" not in printed
    (trials_file,) = glob.glob(str(output / "searches" / "*" / "trials.jsonl"))
    finished = records(trials_file)
    assert 1 <= len(finished) < 4
    trained = run_folders(str(output))
    assert len(trained) == len(finished) and not (output / RESULTS_FILE).exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "(resumed)" in resumed.stdout
    (search,) = records(str(output / SEARCHES_FILE))
    assert search["trials"] == 4
    now = run_folders(str(output))
    # the finished trials were not trained again: 4 trials and the one cell, each once
    assert set(trained) < set(now) and len(now) == 4 + 1


@pytest.mark.slow
def test_a_ray_search_capped_at_one_epoch_a_trial_feeds_the_grid(data, workdir):
    output = str(workdir / "cmp")
    grid = grid_file(workdir, data, models=("SASRec",), tool="ray", epochs=1)
    assert main(["compare", "--grid", grid, "--max_evals", "2", "--output", output,
                 "--epochs=3"]) == 0
    (search,) = records(os.path.join(output, SEARCHES_FILE))
    assert search["trials"] == 2 and search["epochs"] == 2  # the cap: 1 epoch a trial
    (cell,) = records(os.path.join(output, RESULTS_FILE))
    assert cell["status"] == "ok" and cell["epochs_run"] == 3  # the cell's own epochs
    assert cell["overrides"]["learning_rate"] == str(search["params"]["learning_rate"])
