"""A grid's results file, `<output>/results.jsonl`: one JSON record per finished cell,
appended as the cell ends and never rewritten (see `utils.jsonl`), so an interrupted grid
resumes where it stopped. A record holds the cell (model, dataset, seed), its settings key,
`status` ("ok" with the run's result, or "failed" with its error) and the run's figures.

A cell whose run finished (its run folder holds results.json) but whose record was never
appended (the grid was stopped in between) is adopted from its run folder by `adopt_runs`
instead of being trained again.
"""

import glob
import json
import os
import time

from recbole_hybrid.utils import jsonl

RESULTS_FILE = "results.jsonl"
RECORD_KEYS = ("model", "dataset", "status", "settings_key")
PLACEMENT_KEYS = ("use_gpu", "gpu_id")  # set by an engine where a cell runs, not what it is


def read_records(output):
    """Every record of `<output>/results.jsonl`, in order; lines that are not records (a
    torn last line after a crash, a foreign line) are skipped."""
    return _read(output)[0]


def _read(output):
    return jsonl.read(os.path.join(output, RESULTS_FILE), RECORD_KEYS, _is_record)


def _is_record(record):
    if record["status"] == "ok":
        return isinstance(record.get("test_result"), dict) and \
            isinstance(record.get("best_valid_result"), dict)
    return record["status"] == "failed" and isinstance(record.get("error"), str)


def latest(records, grid):
    """{(model, dataset, seed): the latest record of that cell with the grid's settings}."""
    keys = {grid.settings_key(c): c for c in grid.cells()}
    found = {}
    for record in records:
        cell = keys.get(record.get("settings_key"))
        if cell is not None:
            found[(cell.model, cell.dataset, cell.seed)] = record
    return found


def record_of(grid, cell, outcome, log_file, finished=None):
    """The record of `cell` whose run ended with `outcome` ({"status": ...} and the run's
    result or error)."""
    return {"model": cell.model, "dataset": cell.dataset, "seed": cell.seed,
            "settings_key": grid.settings_key(cell),
            "overrides": {k: str(v) for k, v in cell.overrides.items()},
            "log_file": log_file, "finished": finished or time.strftime("%Y-%m-%dT%H:%M:%S"),
            **outcome}


def adopt_runs(output, grid, cells, log_file_of):
    """Append a record for each of `cells` whose finished run lies in `<output>/runs/` (its
    results.json holds the cell's model, dataset, config files and settings); the latest
    such run counts. Returns the adopted cells."""
    runs = []
    for path in glob.glob(os.path.join(output, "runs", "*", "results.json")):
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(result, dict):
            runs.append(result)
    adopted = []
    for cell in cells:
        mine = [r for r in runs if (r.get("model"), r.get("dataset"), r.get("config_files"),
                                    _unplaced(r.get("overrides"))) == (
            cell.model, cell.dataset, list(grid.config_files),
            _unplaced({k: str(v) for k, v in cell.overrides.items()}))]
        mine = [r for r in mine if _is_record({"status": "ok", **r})]
        if mine:
            result = max(mine, key=lambda r: str(r.get("finished")))
            append(output, record_of(grid, cell, {"status": "ok", **result, "adopted": True},
                                     log_file_of(cell), str(result.get("finished"))))
            adopted.append(cell)
    return adopted


def _unplaced(overrides):
    return overrides and {k: v for k, v in overrides.items() if k not in PLACEMENT_KEYS}


def append(output, record):
    """Append one cell's record (flushed to disk before this returns)."""
    jsonl.append(os.path.join(output, RESULTS_FILE), record)


def latest_of(output, grid):
    """`latest` of every record in `output`."""
    return latest(read_records(output), grid)


def note_skipped(output, log):
    """Tell `log` which lines of the results file are skipped (torn or foreign lines)."""
    skipped = _read(output)[1]
    if skipped:
        log(f"note: lines {', '.join(map(str, skipped[:10]))} of {output}/{RESULTS_FILE} are not "
            "records (a torn write?) and are skipped")
