"""Faults inside runs, searches and grids: losses and devices, the internal-error path,
hyperopt searches, params and grid files, failed cells, damaged records."""

import json
import os
import re
import socket

import pytest
import torch
import yaml
from conftest import assert_one_paragraph, cli_run, flags, read_only

from recbole_hybrid import cli
from recbole_hybrid.quick_start import runner
from recbole_hybrid.compare import Grid, check_grid
from recbole_hybrid.utils.ports import check_port
from recbole_hybrid.errors import ConfigError, UserError
from recbole_hybrid.compare.rows import ranks
from recbole_hybrid.tune import tune

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


@pytest.mark.slow
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
    check_port(port, "127.0.0.1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="not free"):
            check_port(busy.getsockname()[1], "127.0.0.1")
