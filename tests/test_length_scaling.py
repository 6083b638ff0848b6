"""benchmarks/length_scaling.py: its smallest setting end to end, and its slope and crossover."""

import csv
import importlib.util
import math
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "length_scaling.py")


def load():
    spec = importlib.util.spec_from_file_location("length_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(model, seconds_by_length):
    return [{"model": model, "length": n, "seconds": s, "peak_mb": s, "error": ""}
            for n, s in seconds_by_length.items()]


def test_slope_is_the_log_log_fit_from_200_to_2000():
    bench = load()
    quadratic = rows("A", {n: 1e-6 * n ** 2 for n in (50, 100, 200, 500, 1000, 2000)})
    flat = rows("B", {50: 9.0, 200: 1.0, 500: 1.0, 2000: 1.0})  # L=50 lies outside the fit
    assert bench.slope(quadratic, "A", "seconds") == pytest.approx(2.0)
    assert bench.slope(flat, "B", "seconds") == pytest.approx(0.0, abs=1e-9)
    assert bench.slope(rows("C", {200: 1.0}), "C", "seconds") is None  # one point: no fit


def test_cheaper_from_is_the_length_from_which_on_the_model_stays_below_sasrec():
    bench = load()
    sasrec = rows("SASRec", {50: 1.0, 100: 2.0, 200: 4.0, 500: 8.0})
    crossing = rows("M", {50: 1.5, 100: 1.0, 200: 5.0, 500: 6.0})  # below at 100, above at 200
    assert bench.cheaper_from(sasrec + crossing, "M", "seconds") == 500
    assert bench.cheaper_from(sasrec + rows("M", {n: 0.5 for n in (50, 100, 200, 500)}),
                              "M", "seconds") == 50
    assert bench.cheaper_from(sasrec + rows("M", {n: 9.0 for n in (50, 100, 200, 500)}),
                              "M", "seconds") == "never"
    assert bench.cheaper_from(crossing, "M", "seconds") is None  # no SASRec measured


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_smallest_setting_writes_its_table_and_figure(tmp_path):
    out = str(tmp_path / "lengths")
    args = ["--models", "SASRec,Mamba4Rec", "--lengths", "16,32", "--tokens", "64", "--steps",
            "1", "--config", "n_layers=1", "--out", out]
    done = run(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(out, "lengths.csv")) as f:
        table = list(csv.DictReader(f))
    assert [(r["model"], int(r["length"]), int(r["batch"])) for r in table] == [
        ("SASRec", 16, 4), ("Mamba4Rec", 16, 4), ("SASRec", 32, 2), ("Mamba4Rec", 32, 2)]
    for row in table:
        assert row["error"] == ""
        assert float(row["seconds"]) > 0 and float(row["peak_mb"]) >= 0
        assert float(row["held_mb"]) > 50  # the process: interpreter, torch, the model
        assert math.isfinite(float(row["loss"])) and float(row["loss"]) > 0
    assert int(table[0]["parameters"]) > 0
    markdown = open(os.path.join(out, "lengths.md")).read()
    assert "n_layers=1" in markdown and "Parameters (at the shortest length" in markdown
    assert "## seconds per step" in markdown and "## peak MB of the steps" in markdown
    assert "| Mamba4Rec |" in markdown and "L=32" in markdown
    with open(os.path.join(out, "lengths.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    before = open(os.path.join(out, "lengths.csv")).read()
    again = run(*args)  # a second run into the same folder keeps the first one's results
    assert again.returncode == 2 and "already holds lengths.csv" in again.stderr
    assert "Traceback" not in again.stderr
    assert open(os.path.join(out, "lengths.csv")).read() == before


def test_a_malformed_config_pair_is_one_paragraph(tmp_path):
    done = run("--config", "n_layers", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "is not KEY=VALUE" in done.stderr
    assert "Traceback" not in done.stderr
