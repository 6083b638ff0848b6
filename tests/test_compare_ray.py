"""`compare --engine ray`: every cell a Ray task, on a two-node Ray cluster on this machine."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import TINY_CELL, assert_one_paragraph, free_port
from recbole_hybrid.cli import main
from recbole_hybrid.compare import RESULTS_FILE, Grid, compare, load_grid, read_records
from recbole_hybrid.compare.searches import tune_section

def grid_file(folder, data_path, **model_settings):
    path = os.path.join(folder, "grid.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"models": ["SASRec", "MaTrRec"], "datasets": ["tiny"],
                        "baselines": ["SASRec"], "settings": {**TINY_CELL, "data_path": data_path},
                        "model_settings": model_settings}, f)
    return path


def compare_command(grid, output, *extra):
    return [sys.executable, "-m", "recbole_hybrid", "compare", "--grid", grid, "--output",
            output, "--seeds", "2", *extra]


@pytest.mark.parametrize("flags, fragments", [
    (["--engine", "ray", "--cpus_per_cell", "0"], ["--cpus_per_cell=0.0", "above 0"]),
    (["--engine", "ray", "--max_failures", "-1"], ["--max_failures=-1", "at least 0"]),
    (["--engine", "ray", "--gpus_per_cell", "1.5"], ["--gpus_per_cell=1.5", "fraction below 1"]),
    (["--engine", "ray", "--jobs", "2"], ["--jobs applies to --engine local, not ray",
                                          "as many cells at once"]),
    (["--cpus_per_cell", "2"], ["--cpus_per_cell applies to --engine ray, not local"]),
    (["--engine", "ray", "--ray_address", "nonsense"], ["--ray_address=nonsense", "HOST:PORT"]),
])
def test_bad_engine_flags_are_one_paragraph_before_anything_trains(
        flags, fragments, data_path, workdir, capsys):
    output = str(workdir / "out")
    code = main(["compare", "--grid", grid_file(str(workdir), data_path), "--output", output,
                 *flags])
    assert_one_paragraph(code, capsys.readouterr().err, *fragments)
    assert not os.path.exists(output)


def test_a_ray_address_where_nothing_answers_fails_in_seconds(data_path, workdir, capsys):
    output, started = str(workdir / "out"), time.time()
    code = main(["compare", "--grid", grid_file(str(workdir), data_path), "--output", output,
                 "--engine", "ray", f"--ray_address=127.0.0.1:{free_port()}"])
    assert_one_paragraph(code, capsys.readouterr().err, "nothing answers there",
                         "ray start --head")
    assert time.time() - started < 30  # Ray itself retries a dead address for minutes
    assert not glob.glob(os.path.join(output, "runs", "*")) and not os.path.exists(
        os.path.join(output, RESULTS_FILE))


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes with one CPU each, on this machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def records_by_cell(output):
    return {(r["model"], r["seed"]): r for r in read_records(output)}


def metric_tables(output):
    """table.md without its efficiency table (times and memory differ from run to run)."""
    with open(os.path.join(output, "table.md")) as f:
        text = f.read()
    return text[:text.index("| dataset | model | parameters |")]


@pytest.mark.slow
def test_a_grid_on_two_ray_nodes_runs_every_cell_on_both_with_the_local_table(
        two_nodes, data_path, workdir):
    grid = Grid(models=["SASRec", "MaTrRec"], datasets=["tiny"], seeds=[1, 2],
                settings={**TINY_CELL, "data_path": data_path}, baselines=["SASRec"])
    ray_output, local_output = str(workdir / "ray"), str(workdir / "local")
    log = []
    compare(grid, ray_output, log=log.append, engine="ray", ray_address=two_nodes.address)
    by_ray = records_by_cell(ray_output)
    assert len(by_ray) == 4 and all(r["status"] == "ok" for r in by_ray.values()), by_ray
    assert len({r["ray_node_id"] for r in by_ray.values()}) == 2  # both nodes trained cells
    assert "Ray tasks of 1 CPUs and 0 GPUs each" in log[0]
    # every cell's run folder and log lie in the output folder, not in Ray's folders
    assert all(r["results_file"].startswith(ray_output) for r in by_ray.values())
    assert len(glob.glob(os.path.join(ray_output, "logs", "*.log"))) == 4

    compare(grid, local_output, log=lambda _: None, jobs=2)  # one torch thread per cell too
    by_local = records_by_cell(local_output)
    assert {cell: r["test_result"] for cell, r in by_ray.items()} == {
        cell: r["test_result"] for cell, r in by_local.items()}
    assert metric_tables(ray_output) == metric_tables(local_output)

    again = []  # the same grid again: nothing to run
    compare(grid, ray_output, log=again.append, engine="ray", ray_address=two_nodes.address)
    assert "4 already done" in again[0] and "0 to run" in again[0]


def cell_tasks():
    """Processes of this machine that run a grid cell's Ray task now."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                if f.read().startswith(b"ray::_cell_task"):
                    found.append(int(path.split("/")[2]))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_of_a_ray_grid_cancels_its_cells_and_the_rerun_runs_only_the_rest(
        two_nodes, data_path, workdir):
    # SASRec's two cells end in seconds; MaTrRec's train long enough to be interrupted
    grid = grid_file(str(workdir), data_path, MaTrRec={"epochs": 30, "stopping_step": 30})
    output = str(workdir / "out")
    command = compare_command(grid, output, "--engine", "ray",
                              f"--ray_address={two_nodes.address}")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (
            len(read_records(output)) >= 2 and glob.glob(f"{output}/runs/MaTrRec-*/*.pth")):
        time.sleep(0.2)
    assert cell_tasks(), "no cell was training when the signal came"
    process.send_signal(signal.SIGTERM)
    printed, _ = process.communicate(timeout=60)
    assert process.returncode == 130, printed[-3000:]
    assert "run the same command again to resume" in printed and "Traceback" not in printed
    deadline = time.time() + 15
    while cell_tasks() and time.time() < deadline:
        time.sleep(0.2)
    assert not cell_tasks(), "a cell's Ray task still runs after its grid was stopped"
    finished = sorted((r["model"], r["seed"]) for r in read_records(output))
    assert finished == [("SASRec", 2020), ("SASRec", 2021)]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 already done" in resumed.stdout and "2 to run" in resumed.stdout
    with open(os.path.join(output, RESULTS_FILE)) as f:
        cells = [(r["model"], r["seed"]) for r in map(json.loads, f)]
    assert sorted(cells) == sorted((m, s) for m in ("SASRec", "MaTrRec") for s in (2020, 2021))


@pytest.mark.slow
def test_kill_9_of_a_ray_grid_ends_its_cells_tasks(two_nodes, data_path, workdir):
    """Nothing of ours runs at a kill -9: Ray ends the dead driver's job, and its tasks."""
    grid = grid_file(str(workdir), data_path, SASRec={"epochs": 200, "stopping_step": 200})
    output = str(workdir / "out")
    process = subprocess.Popen(compare_command(grid, output, "--engine", "ray",
                                               f"--ray_address={two_nodes.address}"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(f"{output}/runs/SASRec-*/*.pth"):
        time.sleep(0.2)
    assert cell_tasks(), "no cell was training when the signal came"
    process.kill()
    process.wait()
    deadline = time.time() + 15
    while cell_tasks() and time.time() < deadline:
        time.sleep(0.2)
    assert not cell_tasks(), "a cell's Ray task still runs after its grid was killed"


@pytest.mark.slow
@pytest.mark.parametrize("flag, needs", [("--cpus_per_cell=2", "2 CPUs and 0 GPUs"),
                                         ("--gpus_per_cell=0.5", "1 CPUs and 0.5 GPUs")])
def test_a_cell_larger_than_every_node_is_refused_before_anything_trains(
        flag, needs, two_nodes, data_path, workdir, capsys):
    output = str(workdir / "out")
    code = main(["compare", "--grid", grid_file(str(workdir), data_path), "--output", output,
                 "--engine", "ray", f"--ray_address={two_nodes.address}", flag])
    assert_one_paragraph(code, capsys.readouterr().err, f"needs {needs} on one node",
                         "1 CPUs / 0 GPUs")
    assert not os.path.exists(os.path.join(output, RESULTS_FILE))


def kill_a_training_cell():
    """SIGKILL the worker process of a cell's task (as when a worker or its node is lost)."""
    (worker,) = cell_tasks()
    os.kill(worker, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("max_failures", [1, 0])
def test_a_cell_whose_worker_dies_runs_again_up_to_max_failures_times(
        max_failures, two_nodes, data_path, workdir):
    grid = str(workdir / "grid.yaml")
    with open(grid, "w") as f:
        yaml.safe_dump({"models": ["MaTrRec"], "datasets": ["tiny"], "settings": {
            **TINY_CELL, "data_path": data_path, "epochs": 20, "stopping_step": 20}}, f)
    output = str(workdir / "out")
    process = subprocess.Popen(
        [sys.executable, "-m", "recbole_hybrid", "compare", "--grid", grid, "--output", output,
         "--engine", "ray", f"--ray_address={two_nodes.address}", "--ours=MaTrRec",
         "--baselines=MaTrRec", f"--max_failures={max_failures}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not glob.glob(f"{output}/runs/*/*.pth") and time.time() < deadline:
        time.sleep(0.1)  # the cell trains: it has written its first checkpoint
    kill_a_training_cell()
    printed, _ = process.communicate(timeout=300)
    (record,) = read_records(output)
    if max_failures:  # run again, and it finished
        assert process.returncode == 0 and record["status"] == "ok", printed[-3000:]
        assert len(glob.glob(f"{output}/runs/*")) == 2  # the killed attempt's folder stays
    else:  # recorded as failed with its error; the grid ends with one paragraph
        assert process.returncode == 2 and record["status"] == "failed", printed[-3000:]
        assert "Ray worker ended without a result after 1 attempt(s)" in record["error"]
        assert "1 of 1 cells failed" in printed and "Traceback" not in printed


@pytest.mark.slow
def test_a_tuned_ray_grid_searches_with_ray_tune_on_the_same_cluster(two_nodes, data_path, workdir):
    space = workdir / "space.hyper"
    space.write_text("learning_rate choice [0.01, 0.003]\n")
    grid = Grid(models=["SASRec", "MaTrRec"], datasets=["tiny"], baselines=["SASRec"],
                settings={**TINY_CELL, "data_path": data_path, "epochs": 2},
                tune=tune_section({"params_files": {"SASRec": str(space), "MaTrRec": str(space)},
                                   "max_evals": 2, "tool": "hyperopt"}, "the test"))
    output, log = str(workdir / "out"), []
    records = compare(grid, output, log=log.append, engine="ray", ray_address=two_nodes.address)
    assert all(r["status"] == "ok" for r in records.values()) and len(records) == 2
    assert any("note: the searches run hyperopt in this process" in line for line in log)

    grid.tune["tool"] = "ray"  # what `compare --engine ray` takes where nothing names a tool
    records = compare(grid, str(workdir / "tuned"), log=log.append, engine="ray",
                      ray_address=two_nodes.address)
    assert all(r["status"] == "ok" for r in records.values()) and len(records) == 2
    searches = glob.glob(str(workdir / "tuned" / "searches" / "*" / "ray" / "search"))
    assert len(searches) == 2  # Ray Tune experiments, in the grid's connection to the cluster
    for folder in glob.glob(str(workdir / "tuned" / "searches" / "*")):
        with open(os.path.join(folder, "trials.csv")) as f:
            assert len(f.read().splitlines()) == 3  # a header and two trials


def test_a_ray_grid_searches_with_ray_tune_unless_the_grid_names_a_tool(data_path, workdir):
    path = grid_file(str(workdir), data_path)
    assert load_grid(path, tune={}, tool="ray").tune["tool"] == "ray"
    assert load_grid(path, tune={"tool": "hyperopt"}, tool="ray").tune["tool"] == "hyperopt"
    assert load_grid(path, tune={}).tune["tool"] == "hyperopt"
    assert load_grid(path, tool="ray").tune is None  # an untuned grid stays untuned
    with open(path) as f:
        spec = yaml.safe_load(f)
    with open(path, "w") as f:
        yaml.safe_dump({**spec, "tune": {"tool": "hyperopt"}}, f)
    assert load_grid(path, tune={}, tool="ray").tune["tool"] == "hyperopt"


def test_a_node_without_the_grids_folders_says_so(tmp_path):
    from recbole_hybrid.compare.cell_ray import missing_folders

    assert missing_folders("node-b 10.0.0.2", str(tmp_path)) is None
    message = missing_folders("node-b 10.0.0.2", str(tmp_path), str(tmp_path / "out" / "logs"))
    assert message.startswith(f"node-b 10.0.0.2 does not have {tmp_path}/out/logs:")
    assert "shared file system" in message
