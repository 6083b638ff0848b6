"""The search stage of a tuned grid (a `tune:` section in the grid file, or `compare --tune`).

Before any seed runs, every (model, dataset) gets a search on the validation split with the
same budget for every model (the same engine, algorithm, number of trials and epoch cap)
over that model's params file (`properties/hyper/<model>.hyper` unless the grid names
another), through `tune.tune`; the best setting then runs with every seed (`Grid.tuned`).

    tune:
      params_files: {MaTrRec: my_space.hyper}  # default properties/hyper/<model>.hyper
      tool: hyperopt                           # or ray (ASHA)
      algo: random                             # or exhaustive, bayes
      max_evals: 8                             # trials per (model, dataset)
      epochs: 20                               # a trial trains at most this many epochs

A search lives in `<output>/searches/<model>-<dataset>-<key>/` (`key`: what it depends on,
its params file's text included); when it ends, its record (the chosen setting and the
budget spent: trials, epochs, seconds of its trials) is appended to
`<output>/searches.jsonl`, so a finished search is not run again, and an interrupted one
resumes with its finished trials kept.
"""

import hashlib
import json
import math
import os
import time

from recbole_hybrid.config.files import resolve
from recbole_hybrid.errors import ConfigError, UserError, shown
from recbole_hybrid.utils import jsonl

SEARCHES_FILE = "searches.jsonl"
DEFAULTS = {"params_files": {}, "tool": "hyperopt", "algo": "random", "max_evals": 8,
            "epochs": None}
MAX_EVALS = 10000


def tune_section(value, where):
    """The grid's `tune:` section with its defaults, checked (ConfigError naming `where`)."""
    from recbole_hybrid.tune.engines import ALGOS, ENGINES

    if not isinstance(value, dict):
        raise ConfigError(f"{where}: `tune` must map {', '.join(DEFAULTS)} to values "
                          f"(e.g. {{max_evals: 8}}), got {shown(repr(value))}")
    unknown = sorted(set(value) - set(DEFAULTS), key=str)
    if unknown:
        raise ConfigError(f"{where}: `tune` takes {', '.join(DEFAULTS)}, not "
                          f"{shown(repr(unknown[0]))}")
    section = {**DEFAULTS, **{k: v for k, v in value.items() if v is not None}}
    files = section["params_files"]
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in files.items()):
        raise ConfigError(f"{where}: `tune: params_files` must map model names to params "
                          f"files, got {shown(repr(files))}")
    for key, choices in (("tool", ENGINES), ("algo", ALGOS)):
        if not isinstance(section[key], str) or section[key] not in choices:
            raise ConfigError(f"{where}: tune {key} {shown(repr(section[key]))}: choose one of "
                              f"{', '.join(choices)}")
    for key, least, most in (("max_evals", 1, MAX_EVALS), ("epochs", 1, None)):
        number = section[key]
        if number is None:
            continue
        if type(number) is not int or number < least or (most and number > most):
            raise ConfigError(f"{where}: tune {key} must be an integer from {least}"
                              + (f" to {most}" if most else "") + f", got {shown(repr(number))}")
    return section


def params_file(grid, model):
    return grid.tune["params_files"].get(model) or f"properties/hyper/{model}.hyper"


def pairs(grid):
    """Every (model, dataset) of the grid, in the order of its cells."""
    return [(model, dataset) for dataset in grid.datasets for model in grid.models]


def check_searches(grid, output):
    """Every model's params file exists, suits the algorithm and holds settings of that
    model whose values its configuration takes on every dataset: before anything trains."""
    from recbole_hybrid.tune.search import read_space
    from recbole_hybrid.tune.search_setup import SearchSetup

    for model in grid.models:
        path = params_file(grid, model)
        if not os.path.isfile(resolve(path)):
            raise ConfigError(
                f"{model} has no search space: {path} does not exist. A tuned grid searches "
                f"every model; give {model} one in the grid file (tune: {{params_files: "
                f"{{{model}: space.hyper}}}}, RecBole's params-file format), or leave {model} "
                "out of the grid")
    spaces = {model: read_space(params_file(grid, model), grid.tune["algo"])
              for model in grid.models}
    if grid.tune["algo"] == "exhaustive":  # every point of each space: its size is the budget
        sizes = {model: math.prod(len(values) for _, values in space.values())
                 for model, space in spaces.items()}
        if len(set(sizes.values())) > 1:
            raise ConfigError(
                "an exhaustive search runs every point of a model's space, and these differ ("
                + ", ".join(f"{model} {size}" for model, size in sizes.items())
                + " trials): not the same budget for every model. Use algo random or bayes "
                "with max_evals, or spaces with as many points")
    for model, dataset in pairs(grid):
        SearchSetup(model, dataset, grid.config_files, _settings(grid, model, dataset),
                    output).check_space(spaces[model])


def run_searches(grid, output, log=print, options=None):
    """Runs the grid's missing searches, then sets `grid.tuned` from every search's record
    (Interrupted when stopped: the finished trials and searches are kept). `options` are
    `tune`'s engine flags (a Ray grid's CPUs and GPUs per trial)."""
    from recbole_hybrid.tune import tune
    from recbole_hybrid.tune.engines import engine

    keys = {pair: search_key(grid, *pair) for pair in pairs(grid)}
    done = {(r["model"], r["dataset"]): r for r in read_searches(output)
            if keys.get((r["model"], r["dataset"])) == r["search_key"]}
    todo = [pair for pair in pairs(grid) if pair not in done]
    log(f"{len(pairs(grid))} searches ({grid.tune['max_evals']} trials each), "
        f"{len(pairs(grid)) - len(todo)} already done in {os.path.join(output, SEARCHES_FILE)}")
    for model, dataset in todo:
        key = keys[(model, dataset)]
        folder = os.path.join(output, "searches", f"{model}-{dataset}-{key}")
        resume = engine(grid.tune["tool"]).started(folder)
        log(f"search of {model} on {dataset}" + (" (resumed)" if resume else "")
            + f": {folder}")
        best = tune(model, dataset, params_file(grid, model), grid.tune["tool"],
                    grid.tune["algo"], grid.tune["max_evals"], grid.config_files,
                    _settings(grid, model, dataset), folder, resume=resume, log=log,
                    **(options or {}))
        if best is None:
            raise UserError(f"no trial of the search of {model} on {dataset} finished (see "
                            f"{folder}/trials.md): give its trials more epochs")
        record = {"model": model, "dataset": dataset, "search_key": key,
                  "params": best["params"], "best_valid_score": best["best_valid_score"],
                  **best["budget"], "folder": os.path.relpath(folder, output),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        jsonl.append(os.path.join(output, SEARCHES_FILE), record)
        done[(model, dataset)] = record
    set_tuned(grid, done)


def read_searches(output):
    """Every search record of `<output>/searches.jsonl`, in order (torn lines skipped)."""
    return jsonl.read(os.path.join(output, SEARCHES_FILE),
                      ("model", "dataset", "search_key", "params", "trials"))[0]


def set_tuned(grid, records):
    """`grid.searches` {(model, dataset): record} and `grid.tuned` (their settings)."""
    grid.searches = dict(records)
    grid.tuned = {pair: record["params"] for pair, record in records.items()}


def latest_searches(output):
    """{(model, dataset): the latest search record}: what --report draws."""
    return {(r["model"], r["dataset"]): r for r in read_searches(output)}


def search_key(grid, model, dataset):
    """What a search depends on: the model, dataset, settings, budget and params file."""
    path = resolve(params_file(grid, model))
    with open(path, encoding="utf-8-sig") as f:
        space_text = f.read()
    text = json.dumps([model, dataset, grid.config_files, _settings(grid, model, dataset),
                       {k: v for k, v in grid.tune.items() if k != "params_files"}, space_text],
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _settings(grid, model, dataset):
    """A search's fixed settings: those of the pair's first cell (its first seed) but the
    shared settings only other models read, trials capped at the section's epochs."""
    from recbole_hybrid.config.builder import build_config
    from recbole_hybrid.config.keys import foreign_keys

    cell = next(c for c in grid.cells(tuned=False) if (c.model, c.dataset) == (model, dataset))
    foreign = foreign_keys(model, cell.overrides)
    settings = {k: v for k, v in cell.overrides.items() if k not in foreign}
    cap = grid.tune["epochs"]
    if cap is not None:
        configured = build_config(model, dataset, grid.config_files, settings, scope="any")["epochs"]
        settings["epochs"] = min(cap, configured)
    return settings
