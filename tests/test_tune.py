"""`recbole-hybrid tune`: hyperopt through RecBole's HyperTuning, Ray Tune local and cluster."""

import csv
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import TINY_SASREC, free_port
from recbole_hybrid.errors import ConfigError, UserError
from recbole_hybrid.quick_start.runner import run
from recbole_hybrid.compare.grid import DEFAULT_MODELS
from recbole_hybrid.tune import as_config_values, read_params_file, tune
from recbole_hybrid.tune.search_setup import SearchSetup

SETTINGS = {**TINY_SASREC, "epochs": 3, "seed": 7}
CHOICES = "learning_rate choice [0.01, 0.003]\nn_layers choice [1,2]\n"
RANGES = "learning_rate loguniform -6,-3\nhidden_dropout_prob uniform 0.1,0.5\nn_layers quniform 1,2,1\n"


def params_file(tmp_path, text, name="space.hyper"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def read_trials(output):
    with open(os.path.join(output, "trials.csv"), newline="") as f:
        return list(csv.DictReader(f))


def assert_best_yaml_reproduces(output, score, workdir):
    """best.yaml alone, as run_recbole_hybrid.py --config_files takes it, gives the score."""
    best = os.path.join(output, "best.yaml")
    with open(best) as f:
        settings = yaml.safe_load(f)
    assert settings["model"] == "SASRec" and settings["dataset"] == "tiny"
    again = run(config_files=[best], output_dir=str(workdir / "again"))
    assert again["model"] == "SASRec" and again["best_valid_score"] == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("model", DEFAULT_MODELS)
def test_every_compared_model_ships_a_space_over_its_own_settings(model, data_path, tmp_path):
    """The models the papers compare (ours and the baselines) each have a params file in
    properties/hyper/ whose every value that model's configuration accepts."""
    space = read_params_file(f"properties/hyper/{model}.hyper")
    assert space["learning_rate"][0] == "loguniform" and len(space) >= 4
    setup = SearchSetup(model, "tiny", overrides={"data_path": data_path, "MAX_ITEM_LIST_LENGTH": 10},
                        output=str(tmp_path / "search"))
    setup.check_space(space)


def test_params_file_errors_say_which_line(tmp_path):
    assert read_params_file(params_file(tmp_path, RANGES + "# comment\n\nd_state choice [16, 32]\n")) == {
        "learning_rate": ("loguniform", (-6.0, -3.0)), "hidden_dropout_prob": ("uniform", (0.1, 0.5)),
        "n_layers": ("quniform", (1.0, 2.0, 1.0)), "d_state": ("choice", [16, 32])}
    for text, message in [("lr loguniform 1\n", "low,high"), ("lr gaussian 0,1\n", "a kind among"),
                          ("n choice 3\n", "non-empty list"), ("lr uniform 0.5,0.1\n", "low < high"),
                          ("lr\n", "expected 'name kind values'"), ("\n", "no parameters")]:
        with pytest.raises(ConfigError, match=message):
            read_params_file(params_file(tmp_path, text))
    with pytest.raises(UserError, match="params file not found"):
        read_params_file(str(tmp_path / "missing.hyper"))
    space = read_params_file(params_file(tmp_path, RANGES))
    assert as_config_values({"n_layers": 2.0, "learning_rate": 0.01}, space) == {
        "n_layers": 2, "learning_rate": 0.01}


@pytest.mark.parametrize("text, message", [
    ("lr uniform nan,1\n", "finite numbers"), ("lr uniform 0,inf\n", "finite numbers"),
    ("lr loguniform 700,800\n", "bounds from -700 to 700"), ("lr choice [.nan]\n", "finite"),
    ("lr choice [null]\n", "a list of numbers, words or true/false"),
    ("lr choice [[1,2]]\n", "a list of numbers"), ("lr choice [0.1,0.2,0.1]\n", "each value once"),
    ("model choice [SASRec]\n", ":1: model is not searched: a search is of one model, given "
                                 "with --model"),
    ("\n# the space\ndataset choice [a]\n", ":3: dataset is not searched"),
    ("lr choice [" + "1," * 3000 + "2]\n", "... (6003 characters)"),
])
def test_params_file_values_that_no_engine_could_search(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_params_file(params_file(tmp_path, text))


def test_a_bad_value_in_the_params_file_names_its_line_not_a_flag(tmp_path, data_path, workdir):
    space = params_file(tmp_path, "# rates\nlearning_rate choice [0.01, -1]\n")
    with pytest.raises(ConfigError, match=re.escape(f"got -1 (set by {space}:2)")):
        tune("SASRec", "tiny", space, overrides={**SETTINGS, "data_path": data_path})


def test_what_the_params_file_reader_accepts_runs_in_hyperopt(tmp_path, data_path, workdir):
    """RecBole's own parser (which read the file a second time) failed on all of these."""
    path = tmp_path / "space.hyper"
    path.write_bytes("\ufeff# the space\r\nlearner\tchoice\t[adam,sgd]  # two\r\n"
                     "n_layers  choice  [1]\r\nreproducibility choice [true]\r\n".encode())
    output = str(workdir / "search")
    tune("SASRec", "tiny", str(path), overrides={**SETTINGS, "epochs": 1, "data_path": data_path},
         output=output, log=lambda _: None)
    trials = read_trials(output)
    assert sorted(t["learner"] for t in trials) == ["adam", "sgd"]
    assert all(t["status"] == "ok" and t["n_layers"] == "1" for t in trials)


def test_bad_search_settings_fail_before_any_trial(tmp_path, data_path, workdir):
    space = params_file(tmp_path, RANGES)
    with pytest.raises(ConfigError, match="exhaustive search needs choices only"):
        tune("SASRec", "tiny", space, algo="exhaustive", overrides={"data_path": data_path})
    with pytest.raises(ConfigError, match="--tool=optuna"):
        tune("SASRec", "tiny", space, tool="optuna")
    with pytest.raises(UserError, match="not found"):
        tune("SASRec", "no_such_data", space, algo="random", overrides={"data_path": data_path})
    assert not os.path.exists("tuning")


@pytest.mark.slow
def test_hyperopt_exhaustive_and_random_searches(tmp_path, data_path, workdir):
    output = str(workdir / "exhaustive")
    best = tune("SASRec", "tiny", params_file(tmp_path, CHOICES), "hyperopt", "exhaustive",
                overrides={**SETTINGS, "data_path": data_path}, output=output, log=lambda _: None)
    trials = read_trials(output)
    assert len(trials) == 4 and {(t["learning_rate"], t["n_layers"]) for t in trials} == {
        ("0.01", "1"), ("0.01", "2"), ("0.003", "1"), ("0.003", "2")}
    scores = [float(t["best valid ndcg@10"]) for t in trials]
    assert scores == sorted(scores, reverse=True) and best["best_valid_score"] == scores[0]
    assert os.path.getsize(os.path.join(output, "hyperopt_results.txt")) > 0  # RecBole's export
    with open(os.path.join(output, "trials.jsonl")) as f:
        assert len(f.read().splitlines()) == 4
    assert_best_yaml_reproduces(output, best["best_valid_score"], workdir)

    output = str(workdir / "random")
    tune("SASRec", "tiny", params_file(tmp_path, RANGES), "hyperopt", "random", max_evals=3,
         overrides={**SETTINGS, "data_path": data_path}, output=output, log=lambda _: None)
    trials = read_trials(output)
    assert len(trials) == 3 and all(t["status"] == "ok" for t in trials)
    assert all(t["n_layers"] in ("1", "2") for t in trials)  # quniform values arrive as ints


@pytest.mark.slow
def test_a_failing_hyperopt_trial_is_recorded_and_the_search_goes_on(tmp_path, data_path, workdir):
    space = params_file(tmp_path, "n_heads choice [3, 1]\n")  # hidden 16 / 3 heads: impossible
    output = str(workdir / "failing")
    best = tune("SASRec", "tiny", space, overrides={**SETTINGS, "data_path": data_path},
                output=output, log=lambda _: None)
    trials = {t["n_heads"]: t for t in read_trials(output)}
    assert trials["3"]["status"] == "failed" and "attention heads (3)" in trials["3"]["error"]
    assert trials["1"]["status"] == "ok" and best["params"] == {"n_heads": 1}


@pytest.fixture
def ray_settings(data_path):
    return {**SETTINGS, "epochs": 4, "data_path": data_path}


@pytest.mark.slow
def test_ray_tune_with_asha_on_a_local_ray(tmp_path, ray_settings, workdir):
    output = str(workdir / "ray")
    best = tune("SASRec", "tiny", params_file(tmp_path, RANGES), "ray", "random", max_evals=4,
                overrides=ray_settings, output=output, log=lambda _: None)
    trials = read_trials(output)
    assert len(trials) == 4
    assert {t["status"] for t in trials} <= {"ok", "stopped"} and trials[0]["status"] == "ok"
    assert all(t["n_layers"] in ("1", "2") for t in trials)
    # every finished trial's run folder lies in the output, not in Ray's working directories
    assert all(t["results_file"].startswith(output) for t in trials if t["status"] == "ok")
    assert_best_yaml_reproduces(output, best["best_valid_score"], workdir)


def tune_command(space, output, settings, *extra):
    return [sys.executable, "-m", "recbole_hybrid", "tune", "--model=SASRec", "--dataset=tiny",
            "--params_file", space, "--output", output, "--tool=ray", *extra] + [
        f"--{k}={v}" for k, v in settings.items()]


@pytest.mark.slow
def test_an_interrupted_ray_search_resumes_without_redoing_finished_trials(
        tmp_path, ray_settings, workdir):
    output = str(workdir / "ray")
    # worst first: ASHA lets each later (better) trial train all its epochs, so a trial is
    # running when the signal comes (best first, ASHA stopped the others after one epoch each,
    # and all four could end before Ray acted on the signal: nothing left to interrupt)
    space = params_file(tmp_path, "learning_rate choice [0.001, 0.003, 0.005, 0.01]\n")
    command = tune_command(space, output, {**ray_settings, "epochs": 6},
                           "--algo=exhaustive", "--cpus_per_trial=2")  # one trial at a time
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not glob.glob(f"{output}/runs/*/results.json"):
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    printed, _ = process.communicate(timeout=120)
    finished = glob.glob(f"{output}/runs/*/results.json")
    assert 1 <= len(finished) < 4, printed[-3000:]
    assert process.returncode == 130 and "--resume" in printed, printed[-3000:]
    statuses = [t["status"] for t in read_trials(output)]
    assert statuses.count("ok") == len(finished) and "unfinished" in statuses, statuses

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the Ray Tune experiment" in resumed.stdout
    trials = read_trials(output)
    assert len(trials) == 4 and all(t["status"] in ("ok", "stopped") for t in trials)
    results = glob.glob(f"{output}/runs/*/results.json")
    assert set(finished) <= set(results)  # the finished ones were kept, not run again:
    assert len(results) == sum(t["status"] == "ok" for t in trials)  # one run per finished trial


@pytest.mark.skipif(shutil.which("ray", path=os.path.dirname(sys.executable)) is None,
                    reason="the ray command is not installed beside this python")
@pytest.mark.slow
def test_two_trials_through_ray_address_on_a_head_started_with_ray_start(
        tmp_path, ray_settings, workdir):
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    port = free_port()
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=environment, timeout=120)
    try:
        output = str(workdir / "cluster")
        command = tune_command(params_file(tmp_path, "learning_rate choice [0.01, 0.003]\n"), output,
                               ray_settings, "--algo=exhaustive", f"--ray_address=127.0.0.1:{port}")
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        trials = read_trials(output)
        assert len(trials) == 2 and trials[0]["status"] == "ok"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=environment, timeout=120)


@pytest.mark.slow
def test_bayes_search_with_both_engines(tmp_path, ray_settings, workdir):
    """hyperopt's TPE through HyperTuning, and through Ray's HyperOptSearch (which takes the
    space itself: none may be passed to the Tuner too)."""
    space = params_file(tmp_path, RANGES)
    for tool in ("hyperopt", "ray"):
        output = str(workdir / tool)
        tune("SASRec", "tiny", space, tool, "bayes", max_evals=2,
             overrides={**ray_settings, "epochs": 2}, output=output, log=lambda _: None)
        trials = read_trials(output)
        assert len(trials) == 2 and trials[0]["status"] == "ok", trials
