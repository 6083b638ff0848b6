"""A grid of models x datasets (x seeds), one cell per combination, each in a fresh process.

Every finished cell is appended at once to `<output>/results.jsonl` (one JSON record per
line, never rewritten), so an interrupted grid resumes where it stopped: a cell whose latest
record for the same settings is "ok" is skipped unless `rerun`. A failing cell is recorded
with its error and the grid goes on. After each cell the tables and figures of `report` are
written again from the file; `report_only` writes them from the file alone, without training.

Grid file (yaml), every key optional except models/datasets where no flag gives them:

    models: [GRU4Rec, SASRec, MaTrRec]
    datasets: [amazon-office-products, amazon-beauty]
    seeds: [2020, 2021, 2022]                   # each cell once per seed (default: one run)
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
import os
import time

from recbole_hybrid import jsonl, registry
from recbole_hybrid.cells import Cell, run_cells
from recbole_hybrid.errors import (
    ConfigError,
    Interrupted,
    UnknownModelError,
    UserError,
    last_line,
)
from recbole_hybrid.outputs import writable_folder, write_text_atomically
from recbole_hybrid.processes import sigterm_as_interrupt
from recbole_hybrid.settings import read_yaml
from recbole_hybrid.validate import check_keys, check_model, computed_metrics

DEFAULT_MODELS = ["GRU4Rec", "NARM", "SASRec", "NextItNet", "BERT4Rec", "SINE", "CORE",
                  "Mamba4Rec", "MaTrRec", "MLSA4Rec", "LightSANs"]
RESULTS_FILE = "results.jsonl"
RECORD_KEYS = ("model", "dataset", "status", "settings_key")
GRID_KEYS = {"models", "datasets", "seeds", "config_files", "settings", "model_settings",
             "dataset_settings", "ours", "baselines", "metrics"}
GRID_FILE = "grid.json"  # the grid of the last run in an output folder, for --report


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
    seeds: list = None  # None: one run per cell with the settings' own seed

    def __post_init__(self):
        self.metrics = [metric.lower() for metric in self.metrics]  # RecBole's result keys

    def cells(self):
        """Every Cell, datasets outermost, then models, then seeds. With seeds, a cell's
        settings carry its seed and `reproducibility: True` (unless set): the settings key
        then differs per seed, and finished seeds are never run again."""
        for dataset in self.datasets:
            for model in self.models:
                overrides = {**self.settings, **self.dataset_settings.get(dataset, {}),
                             **self.model_settings.get(model, {})}
                for seed in self.seeds or [None]:
                    if seed is None:
                        yield Cell(model, dataset, None, overrides)
                    else:
                        yield Cell(model, dataset, seed, {"reproducibility": True, **overrides,
                                                          "seed": seed})

    def settings_key(self, cell):
        """What a cell's result depends on besides code: a changed setting re-runs the cell.
        (A one-seed grid's key is that of earlier versions, so their results still count.)"""
        text = json.dumps([cell.model, cell.dataset, self.config_files, cell.overrides],
                          sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_grid(path=None, models=None, datasets=None, config_files=(), overrides=None, **choices):
    """A Grid from a yaml file and/or flags; flags win, `overrides` join the shared settings."""
    spec = {}
    if path:
        spec = read_yaml(path, "grid file")
        unknown = set(spec) - GRID_KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a grid file takes "
                              f"{', '.join(sorted(GRID_KEYS))}")
    for key, kind in (("models", list), ("datasets", list), ("config_files", list),
                      ("settings", dict), ("model_settings", dict), ("dataset_settings", dict),
                      ("baselines", list), ("metrics", list), ("seeds", list), ("ours", str)):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise ConfigError(f"{path}: `{key}` must be a {kind.__name__}, got {spec[key]!r}")
    for key in ("models", "metrics"):
        if spec.get(key) == []:
            raise ConfigError(f"{path}: `{key}` is an empty list; give at least one, or leave "
                              f"the key out for the default")
    spec["models"] = models or spec.get("models") or DEFAULT_MODELS
    spec["datasets"] = datasets or spec.get("datasets")
    if not spec["datasets"]:
        raise UserError("no datasets: pass --datasets a,b or give `datasets:` in the grid file")
    spec["config_files"] = list(spec.get("config_files") or []) + list(config_files)
    spec["settings"] = {**(spec.get("settings") or {}), **(overrides or {})}
    if isinstance(choices.get("seeds"), int):  # --seeds N: N seeds from the settings' seed on
        if choices["seeds"] < 1:
            raise ConfigError(f"--seeds={choices['seeds']}: must be at least 1")
        first = spec["settings"].get("seed", 2020)
        if not str(first).lstrip("-").isdigit():
            raise ConfigError(f"seed must be an integer, got {first!r}")
        choices["seeds"] = [int(first) + i for i in range(choices["seeds"])]
    spec.update({k: v for k, v in choices.items() if v})
    if spec.get("seeds") is not None:
        seeds = spec["seeds"]
        if not seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds) \
                or len(set(seeds)) != len(seeds):
            raise ConfigError(f"{path or 'the grid'}: `seeds` must be distinct integers, got "
                              f"{seeds!r} (or --seeds N for N seeds)")
    grid = Grid(**spec)
    for model in grid.models:  # a typo fails now, not as a failed cell hours later
        if not registry.is_known(model):
            raise UnknownModelError(registry.unknown_model_message(model))
    _check_names(grid)
    return grid


def check_grid(grid):
    """Build every cell's configuration and check its dataset before any cell runs: a
    typo fails in seconds, not as a failed cell hours later. Shared settings may belong to
    other models of the grid; a model's own settings must be its own. Every cell must
    compute the table's metrics."""
    from recbole_hybrid.datasets import check_dataset
    from recbole_hybrid.settings import build_config

    for cell in grid.cells():
        if cell.seed not in (None, (grid.seeds or [None])[0]):
            continue  # the other seeds differ in the seed only
        check_keys(cell.model, grid.model_settings.get(cell.model, {}),
                   f"model_settings of {cell.model}")
        config = build_config(cell.model, cell.dataset, grid.config_files, cell.overrides, keys="any")
        check_model(config)
        check_dataset(config)
        computed = computed_metrics(config.final_config_dict)
        missing = [m for m in grid.metrics if m.lower() not in computed]
        if missing:
            raise ConfigError(
                f"the table shows {', '.join(missing)}, which {cell.model} does not compute on "
                f"{cell.dataset} (it computes {', '.join(sorted(computed))}); give every "
                "cell the same metrics, e.g. `settings: {metrics: [Recall, NDCG], topk: [10]}` "
                "in the grid file, or choose the table's rows with --metrics"
            )


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


def compare(grid, output="comparison", rerun=False, jobs=1, log=print):
    """Runs the grid's missing cells, `jobs` at a time, each in a fresh process; returns the
    latest records. Ctrl-C or SIGTERM stops the running cells and raises Interrupted;
    finished cells stay."""
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs}: must be at least 1")
    check_grid(grid)
    os.makedirs(writable_folder(output), exist_ok=True)
    _note_skipped(output, log)
    with _exclusive(output), sigterm_as_interrupt():
        _write_grid(grid, output)
        try:
            return _compare(grid, output, rerun, jobs, log)
        except KeyboardInterrupt:
            kept = (f"finished cells are in {output}/{RESULTS_FILE}" if read_records(output)
                    else "no cell had finished")
            raise Interrupted(f"interrupted: {kept}; run the same command again to resume") from None


def _compare(grid, output, rerun, jobs, log):
    cells = list(grid.cells())
    done = latest(read_records(output), grid)
    todo = [c for c in cells
            if rerun or done.get((c.model, c.dataset, c.seed), {}).get("status") != "ok"]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already done in "
        f"{os.path.join(output, RESULTS_FILE)}, {len(todo)} to run"
        + (f", {jobs} at a time" if jobs > 1 and len(todo) > 1 else ""))
    started, finished = time.time(), []

    def on_done(cell, outcome, log_file):
        record = {"model": cell.model, "dataset": cell.dataset, "seed": cell.seed,
                  "settings_key": grid.settings_key(cell),
                  "overrides": {k: str(v) for k, v in cell.overrides.items()},
                  "log_file": log_file, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **outcome}
        jsonl.append(os.path.join(output, RESULTS_FILE), record)
        finished.append(cell)
        elapsed = time.time() - started
        remaining = (len(todo) - len(finished)) * elapsed / len(finished)  # cells are alike
        result = (f"test {_short(record['test_result'], grid.metrics)}"
                  if record["status"] == "ok" else f"FAILED: {last_line(record['error'])}")
        log(f"[{len(finished)}/{len(todo)}] {cell.describe()}: {result} (elapsed "
            f"{_clock(elapsed)}, about {_clock(remaining)} remaining)")
        write_reports(grid, output)

    run_cells(todo, grid.config_files, output, jobs, on_done)
    if not todo:
        write_reports(grid, output)
    return latest(read_records(output), grid)


def write_reports(grid, output):
    from recbole_hybrid import report

    return report.write_all(grid, latest(read_records(output), grid), output)


def report_only(output, log=print, **choices):
    """Write the tables and figures of `output` again from its results.jsonl alone (no
    training); `choices` (metrics, ours, baselines) replace the grid's."""
    path = os.path.join(output, GRID_FILE)
    if not os.path.isdir(output):
        raise UserError(f"--report {output}: no such folder; pass the --output folder of an "
                        "earlier `recbole-hybrid compare`")
    if not os.path.isfile(path):
        raise UserError(f"{output} holds no comparison ({GRID_FILE} is missing): pass the "
                        "--output folder of an earlier `recbole-hybrid compare`")
    try:
        with open(path, encoding="utf-8") as f:
            grid = Grid(**{**json.load(f), **{k: v for k, v in choices.items() if v}})
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} is damaged or from another version ({error}); run the same "
                        "`recbole-hybrid compare` again (finished cells are kept), which "
                        "writes it anew") from None
    _check_names(grid)
    with _exclusive(output):
        _note_skipped(output, log)
        measured = {m for r in read_records(output) for m in r.get("test_result") or {}}
        unknown = [m for m in grid.metrics if measured and m not in measured]
        if unknown:
            raise UserError(f"--metrics: {', '.join(unknown)} not measured in {output}; its "
                            f"results have {', '.join(sorted(measured))}")
        return write_reports(grid, output)


def _note_skipped(output, log):
    skipped = _read(output)[1]
    if skipped:
        log(f"note: lines {', '.join(map(str, skipped[:10]))} of {output}/{RESULTS_FILE} are not "
            "records (a torn write?) and are skipped")


def _check_names(grid):
    """`ours`, the baselines and the keys of model_settings must be model names (a subset
    of a grid file's models may leave some of them out of the grid: no column then)."""
    for name in [grid.ours, *grid.baselines, *grid.model_settings]:
        if not registry.is_known(name):
            raise UnknownModelError(registry.unknown_model_message(name))


def _write_grid(grid, output):
    write_text_atomically(os.path.join(output, GRID_FILE),
                          json.dumps(dataclasses.asdict(grid), indent=2, default=str))


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


def _short(result, metrics):
    return ", ".join(f"{m} {result[m]:.4f}" for m in metrics if m in result) or "(no metrics)"


def _clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
