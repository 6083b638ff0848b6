"""A search's trials and what is written of them into its output folder:
- trials.md and trials.csv: every trial, finished ones first by their best valid score, then
  those ASHA stopped, the failed ones and (interrupted) the unfinished ones;
- best.yaml: the best trial's whole configuration (model, dataset, the settings, its
  parameters), which `run_recbole_hybrid.py --config_files best.yaml` takes as is.
A trial is a dict: params, status (ok, stopped, failed, unfinished), and for a finished one
best_valid_score, test_result, results_file (and its budget: epochs_run, seconds); for a
failed one its error.
"""

import csv
import math
import os

import yaml

from recbole_hybrid.config.files import read_yamls
from recbole_hybrid.errors import last_line
from recbole_hybrid.utils.files import replaced_atomically, write_text_atomically

# stopped: ASHA ended it early; unfinished: the search was interrupted (Ray)
ORDER = {"ok": 0, "stopped": 1, "failed": 2, "unfinished": 3}


def trial_record(params, result=None, error=None):
    """The trial dict of a finished run's `result`, or of a failure's `error` text. The
    budget it spent, where known: `epochs_run` and `seconds` (its wall time)."""
    if error is not None:
        return {"params": params, "status": "failed", "error": error}
    return {"params": params, "status": "ok", "best_valid_score": result["best_valid_score"],
            "test_result": result["test_result"], "results_file": result["results_file"],
            **{k: result[k] for k in ("best_valid_result", "epochs_run", "seconds")
               if result.get(k) is not None}}


def write_outputs(setup, trials):
    """trials.csv, trials.md and (when a trial finished) best.yaml of a search set up by
    `setup` (a SearchSetup); returns the best finished trial, or None."""
    sign = 1 if setup.bigger else -1
    trials = sorted(trials, key=lambda t: (ORDER[t["status"]],
                                           -sign * (t.get("best_valid_score") or 0)))
    names = sorted({name for t in trials for name in t["params"]})
    metrics = sorted({m for t in trials if t["status"] == "ok" for m in t["test_result"]})
    header = names + ["status", f"best valid {setup.valid_metric.lower()}"] + [
        f"test {m}" for m in metrics]
    rows = [[t["params"].get(n) for n in names] + [t["status"], t.get("best_valid_score")]
            + [t.get("test_result", {}).get(m) for m in metrics] for t in trials]
    with replaced_atomically(os.path.join(setup.output, "trials.csv")) as partial, \
            open(partial, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header + ["results_file", "error"]] + [
            row + [t.get("results_file"), t.get("error")] for row, t in zip(rows, trials)])
    lines = [f"{setup.model} on {setup.dataset}, sorted by best valid {setup.valid_metric}", "",
             "| " + " | ".join(header + ["error"]) + " |", "|" + " --- |" * (len(header) + 1)]
    lines += ["| " + " | ".join([_text(v) for v in row]
                                + [last_line(t.get("error")).replace("|", "/")]) + " |"
              for row, t in zip(rows, trials)]
    write_text_atomically(os.path.join(setup.output, "trials.md"), "\n".join(lines) + "\n")
    best = trials[0] if trials and trials[0]["status"] == "ok" else None
    if best:
        write_best_yaml(setup, best["params"])
    return best


def write_best_yaml(setup, params):
    """best.yaml: the fixed settings of `setup` with `params` on top; returns its path."""
    settings = {**read_yamls(setup.config_files), **setup.overrides, **params,
                "model": setup.model, "dataset": setup.dataset}
    settings = {k: _plain(v) for k, v in settings.items()}
    path = os.path.join(setup.output, "best.yaml")
    write_text_atomically(path, f"# best trial of the search in {setup.output}\n"
                          + yaml.safe_dump(settings, sort_keys=True))
    return path


def _text(value):
    if isinstance(value, float):
        return f"{value:.4g}" if not math.isnan(value) else "-"
    return "-" if value is None else str(value)


def _plain(value):
    """Values yaml.safe_dump writes plainly (numpy scalars, tuples)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value
