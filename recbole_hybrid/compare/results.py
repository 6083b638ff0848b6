"""A grid's results file, `<output>/results.jsonl`: one JSON record per finished cell,
appended as the cell ends and never rewritten (see `utils.jsonl`), so an interrupted grid
resumes where it stopped. A record holds the cell (model, dataset, seed), its settings key,
`status` ("ok" with the run's result, or "failed" with its error) and the run's figures.
"""

import os

from recbole_hybrid.utils import jsonl

RESULTS_FILE = "results.jsonl"
RECORD_KEYS = ("model", "dataset", "status", "settings_key")


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
