"""A grid of models x datasets, one cell per (model, dataset), each in a fresh process.

Every finished cell is appended at once to `<output>/results.jsonl` (one JSON record per
line, never rewritten), so an interrupted grid resumes where it stopped: a cell whose latest
record for the same settings is "ok" is skipped unless `rerun`. A failing cell is recorded
with its error and the grid goes on. After each cell the tables and figures of `report` are
written again from the file.

Grid file (yaml), every key optional except models/datasets where no flag gives them:

    models: [GRU4Rec, SASRec, MaTrRec]
    datasets: [amazon-office-products, amazon-beauty]
    config_files: [properties/overall.yaml]
    settings: {epochs: 50}                      # every cell
    model_settings: {SASRec: {n_layers: 2}}     # per model
    dataset_settings: {ml-1m: {MAX_ITEM_LIST_LENGTH: 200}}
    ours: MaTrRec                               # improvement columns: ours over ...
    baselines: [SASRec, Mamba4Rec]
    metrics: [recall@10, ndcg@10]
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback

import yaml

from recbole_hybrid.errors import ConfigError, UserError

DEFAULT_MODELS = ["GRU4Rec", "NARM", "SASRec", "NextItNet", "BERT4Rec", "SINE", "CORE",
                  "Mamba4Rec", "MaTrRec", "MLSA4Rec", "LightSANs"]
RESULTS_FILE = "results.jsonl"
GRID_KEYS = {"models", "datasets", "config_files", "settings", "model_settings",
             "dataset_settings", "ours", "baselines", "metrics"}


@dataclasses.dataclass
class Grid:
    models: list
    datasets: list
    config_files: list = dataclasses.field(default_factory=list)
    settings: dict = dataclasses.field(default_factory=dict)
    model_settings: dict = dataclasses.field(default_factory=dict)
    dataset_settings: dict = dataclasses.field(default_factory=dict)
    ours: str = "MaTrRec"
    baselines: list = dataclasses.field(default_factory=lambda: ["SASRec", "Mamba4Rec"])
    metrics: list = dataclasses.field(default_factory=lambda: ["recall@10", "ndcg@10"])

    def cells(self):
        """(model, dataset, overrides) for every cell, datasets outermost."""
        for dataset in self.datasets:
            for model in self.models:
                overrides = {**self.settings, **self.dataset_settings.get(dataset, {}),
                             **self.model_settings.get(model, {})}
                yield model, dataset, overrides

    def settings_key(self, model, dataset, overrides):
        """What a cell's result depends on besides code: a changed setting re-runs the cell."""
        text = json.dumps([model, dataset, self.config_files, overrides], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_grid(path=None, models=None, datasets=None, config_files=(), overrides=None, **choices):
    """A Grid from a yaml file and/or flags; flags win, `overrides` join the shared settings."""
    spec = {}
    if path:
        if not os.path.isfile(path):
            raise UserError(f"grid file not found: {path}")
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f) or {}
        unknown = set(spec) - GRID_KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a grid file takes "
                              f"{', '.join(sorted(GRID_KEYS))}")
    spec["models"] = models or spec.get("models") or DEFAULT_MODELS
    spec["datasets"] = datasets or spec.get("datasets")
    if not spec["datasets"]:
        raise UserError("no datasets: pass --datasets a,b or give `datasets:` in the grid file")
    spec["config_files"] = list(spec.get("config_files") or []) + list(config_files)
    spec["settings"] = {**(spec.get("settings") or {}), **(overrides or {})}
    spec.update({k: v for k, v in choices.items() if v})
    grid = Grid(**spec)
    from recbole_hybrid import registry
    from recbole_hybrid.errors import UnknownModelError

    for model in grid.models:  # a typo fails now, not as a failed cell hours later
        if not registry.is_known(model):
            raise UnknownModelError(registry.unknown_model_message(model))
    return grid


def read_records(output):
    """Every record of `<output>/results.jsonl`, in order; a torn last line (a crash while
    writing) is ignored."""
    path = os.path.join(output, RESULTS_FILE)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest(records, grid):
    """The latest record of each cell of `grid` with the grid's current settings."""
    keys = {grid.settings_key(m, d, o): (m, d) for m, d, o in grid.cells()}
    found = {}
    for record in records:
        if record.get("settings_key") in keys:
            found[(record["model"], record["dataset"])] = record
    return found


def compare(grid, output="comparison", rerun=False, log=print):
    """Runs the grid's missing cells, one fresh process each; returns the latest records."""
    os.makedirs(output, exist_ok=True)
    with _exclusive(output), _sigterm_as_interrupt():
        return _compare(grid, output, rerun, log)


def _compare(grid, output, rerun, log):
    cells = list(grid.cells())
    done = latest(read_records(output), grid)
    todo = [c for c in cells if rerun or done.get(c[:2], {}).get("status") != "ok"]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already done in "
        f"{os.path.join(output, RESULTS_FILE)}, {len(todo)} to run")
    started, durations = time.time(), []
    for k, (model, dataset, overrides) in enumerate(todo, 1):
        log(f"[{k}/{len(todo)}] {model} on {dataset} ...")
        cell_started = time.time()
        record = _run_cell(grid, model, dataset, overrides, output)
        durations.append(time.time() - cell_started)
        _append(output, record)
        remaining = (len(todo) - k) * sum(durations) / len(durations)
        outcome = (f"test {_short(record['test_result'], grid.metrics)}" if record["status"] == "ok"
                   else f"FAILED: {record['error'].splitlines()[-1]}")
        log(f"[{k}/{len(todo)}] {model} on {dataset}: {outcome} ({durations[-1]:.0f} s; elapsed "
            f"{_clock(time.time() - started)}, about {_clock(remaining)} remaining)")
        write_reports(grid, output)
    if not todo:
        write_reports(grid, output)
    return latest(read_records(output), grid)


def write_reports(grid, output):
    from recbole_hybrid import report

    return report.write_all(grid, latest(read_records(output), grid), output)


def _run_cell(grid, model, dataset, overrides, output):
    """One cell in a fresh interpreter (spawn): RecBole's global state (seeds, logging, the
    config's argv parsing) starts clean; its console output goes to logs/<cell>.log."""
    log_file = os.path.join(output, "logs", f"{model}-{dataset}.log")
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_cell_worker,
        args=(model, dataset, grid.config_files, overrides, os.path.join(output, "runs"),
              log_file, sender),
    )
    process.start()
    sender.close()
    try:
        outcome = receiver.recv()
    except EOFError:  # the process died without sending
        outcome = None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the cell too, record nothing
        process.terminate()
        raise
    finally:
        process.join()
    record = {"model": model, "dataset": dataset,
              "settings_key": grid.settings_key(model, dataset, overrides),
              "overrides": {k: str(v) for k, v in overrides.items()}, "log_file": log_file,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if outcome is None:
        outcome = {"status": "failed",
                   "error": f"the cell's process ended with exit code {process.exitcode} "
                            f"without a result (killed, or out of memory?); see {log_file}"}
    return {**record, **outcome}


def _cell_worker(model, dataset, config_files, overrides, runs_dir, log_file, sender):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grid process decides and terminates us
    with open(log_file, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            from recbole_hybrid.runner import run

            result = run(model, dataset, config_files, overrides, output_dir=runs_dir)
            outcome = {"status": "ok", **result}
        except Exception as error:  # recorded as the cell's result; the grid goes on
            traceback.print_exc()
            message = str(error) if isinstance(error, UserError) else traceback.format_exc()
            outcome = {"status": "failed", "error": message.strip() or type(error).__name__}
        sys.stdout.flush()
        sys.stderr.flush()
        sender.send(outcome)


@contextlib.contextmanager
def _exclusive(output):
    """One grid process per output folder: two would run the same cells twice."""
    with open(os.path.join(output, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `compare` is running on {output}; wait for it, or pass "
                            "another --output") from None
        yield


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill <pid>` stops the grid like Ctrl-C: the running cell is terminated, finished
    cells stay in the results file."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _append(output, record):
    """One line per record, flushed to disk before the next cell starts."""
    with open(os.path.join(output, RESULTS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _short(result, metrics):
    return ", ".join(f"{m} {result[m]:.4f}" for m in metrics if m in result) or "(no metrics)"


def _clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
