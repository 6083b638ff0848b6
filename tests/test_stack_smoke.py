"""The whole stack in a few minutes: what CI's second environment (Python 3.13, numpy 2,
current Ray, from uv.lock) runs, and the first one too. Import, one training of each plugin
model and of SASRec with its checkpoint reloaded, a hyperopt and a Ray Tune search, a grid of
Ray tasks, the README's cluster recipe."""

import csv
import os
import socket
import subprocess
import sys
import time

import pytest
import ray
import recbole.utils
from recbole.quick_start import load_data_and_model

import recbole_hybrid
from recbole_hybrid.compare import Grid, compare
from recbole_hybrid.quick_start.checkpoints import load_checkpoint
from recbole_hybrid.tune import tune

SMALL = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "train_batch_size": 128,
         "eval_batch_size": 256, "epochs": 1, "show_progress": False, "metrics": ["Hit", "NDCG"],
         "topk": [10], "valid_metric": "NDCG@10"}
# each model's own keys, small (a key a model does not read is an error)
MODEL_SETTINGS = {
    "Mamba4Rec": {"d_state": 8, "num_layers": 1},
    "MaTrRec": {"d_state": 8, "n_layers": 1, "n_heads": 1, "inner_size": 32},
    "MLSA4Rec": {"d_state": 8, "num_layers": 1, "n_heads": 2, "k_interests": 4},
    "SASRec": {"n_layers": 1, "n_heads": 1, "inner_size": 32},
}


def settings(model, data_path):
    return {**SMALL, **MODEL_SETTINGS[model], "data_path": data_path}


@pytest.mark.slow
def test_import_in_a_fresh_process_registers_the_models():
    done = subprocess.run([sys.executable, "-c", "import recbole_hybrid as r; print(*r.plugin_models())"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(done.stdout.split()) == {"Mamba4Rec", "MaTrRec", "MLSA4Rec"}


@pytest.mark.parametrize("model", ["Mamba4Rec", "MaTrRec", "MLSA4Rec", "SASRec"])
def test_one_epoch_and_its_checkpoint_reloads(model, data_path, workdir):
    result = recbole_hybrid.run(model, "tiny", overrides=settings(model, data_path),
                                output_dir=str(workdir / "runs"))
    assert 0 < result["test_result"]["ndcg@10"] <= 1

    config, net, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    trainer = recbole.utils.get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(result["test_result"], abs=1e-4)
    # and through the reader of `recommend`, which unpickles only what a checkpoint holds
    assert load_checkpoint(result["checkpoint"])["config"]["model"] == model


@pytest.mark.slow
@pytest.mark.parametrize("tool,model", [("hyperopt", "SASRec"), ("ray", "MaTrRec")])
def test_a_two_trial_search(tool, model, data_path, workdir):
    space = workdir / "space.hyper"
    space.write_text("learning_rate choice [0.01, 0.003]\n")
    output = str(workdir / tool)
    best = tune(model, "tiny", str(space), tool, "exhaustive", overrides=settings(model, data_path),
                output=output, log=lambda _: None)
    trials = read_trials(output)
    # ASHA may stop the worse Ray trial after its first epoch
    assert len(trials) == 2 and trials[0]["status"] == "ok", trials
    assert trials[1]["status"] in ("ok", "stopped"), trials
    assert best["params"]["learning_rate"] in (0.01, 0.003)
    assert os.path.isfile(os.path.join(output, "best.yaml"))


def read_trials(output):
    with open(os.path.join(output, "trials.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_grid_of_ray_tasks_on_a_local_ray(data_path, workdir):
    grid = Grid(models=["MaTrRec", "SASRec"], datasets=["tiny"], baselines=["SASRec"],
                metrics=["ndcg@10"],
                settings=settings("SASRec", data_path),
                model_settings={"MaTrRec": MODEL_SETTINGS["MaTrRec"]})
    records = compare(grid, str(workdir / "grid"), log=lambda _: None, engine="ray")
    assert sorted(model for model, _, _ in records) == ["MaTrRec", "SASRec"]
    for record in records.values():
        assert record["status"] == "ok" and record["ray_node_id"], record.get("error")
        assert 0 < record["test_result"]["ndcg@10"] <= 1


def refused_without_the_token(command, environment):
    """`command` against a head that requires the token: one paragraph without
    RAY_AUTH_MODE=token, done with it (the finished process)."""
    refused = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in refused.stderr and "Traceback" not in refused.stderr
    done = subprocess.run(command, env={**environment, "RAY_AUTH_MODE": "token"},
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.skipif(not hasattr(ray.exceptions, "AuthenticationError"),
                    reason="Ray 2.6 has no token authentication")
@pytest.mark.slow
def test_the_readme_cluster_recipe_with_token_authentication(data_path, workdir):
    """Current Ray: a head started where ~/.ray/auth_token exists requires the token; a client
    without RAY_AUTH_MODE=token gets one clear paragraph, with it the search runs."""
    ray_command = os.path.join(os.path.dirname(sys.executable), "ray")
    environment = {**os.environ, "HOME": str(workdir), "RAY_USAGE_STATS_ENABLED": "0"}
    environment.pop("RAY_AUTH_MODE", None)  # a local ray.init() in this process sets it
    subprocess.run([ray_command, "get-auth-token", "--generate"], env=environment, check=True,
                   capture_output=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = workdir / "head.log"
    with open(log, "w") as output:
        head = subprocess.Popen([ray_command, "start", "--head", f"--port={port}", "--num-cpus=2",
                                 "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while "Ray runtime started" not in log.read_text() and head.poll() is None:
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        space = workdir / "space.hyper"
        space.write_text("learning_rate choice [0.01, 0.003]\n")
        command = [sys.executable, "-m", "recbole_hybrid", "tune", "--model=SASRec", "--dataset=tiny",
                   f"--params_file={space}", f"--output={workdir / 'cluster'}", "--tool=ray",
                   "--algo=exhaustive", f"--ray_address=127.0.0.1:{port}"] + [
            f"--{key}={value}" for key, value in settings("SASRec", data_path).items()]
        refused_without_the_token(command, environment)
        trials = read_trials(str(workdir / "cluster"))
        assert len(trials) == 2 and trials[0]["status"] == "ok", trials

        grid = [sys.executable, "-m", "recbole_hybrid", "compare", "--models=SASRec",
                "--datasets=tiny", "--baselines=SASRec", "--ours=SASRec", "--metrics=ndcg@10",
                f"--output={workdir / 'grid'}", "--engine=ray", f"--ray_address=127.0.0.1:{port}",
                "--seeds=2"] + [f"--{key}={value}" for key, value in
                                settings("SASRec", data_path).items()
                                if key != "metrics"]  # --metrics: the table's, here
        done = refused_without_the_token(grid, environment)
        assert "2 to run, Ray tasks of 1 CPUs and 0 GPUs each" in done.stdout
    finally:
        head.terminate()
        head.wait(timeout=120)
        # a stopped head leaves its address behind, where a later ray.init() would look
        address_file = "/tmp/ray/ray_current_cluster"
        if os.path.isfile(address_file) and open(address_file).read().endswith(f":{port}"):
            os.remove(address_file)
