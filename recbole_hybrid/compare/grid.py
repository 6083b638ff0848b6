"""A comparison grid: models x datasets (x seeds), one Cell per combination.

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
    tune: {max_evals: 8, epochs: 20}            # search every model first (`searches`)

`load_grid` reads it (flags win); `check_grid` builds and checks every cell's settings and
dataset before any cell runs.
"""

import dataclasses
import hashlib
import json

from recbole_hybrid import registry
from recbole_hybrid.config.files import read_yaml
from recbole_hybrid.config.keys import check_keys
from recbole_hybrid.compare.searches import tune_section
from recbole_hybrid.config.values import at_least, computed_metrics
from recbole_hybrid.errors import ConfigError, UserError, shown

DEFAULT_MODELS = ["GRU4Rec", "NARM", "SASRec", "NextItNet", "BERT4Rec", "SINE", "CORE",
                  "Mamba4Rec", "MaTrRec", "MLSA4Rec", "LightSANs"]
MAX_SEEDS = 1000
GRID_KEYS = {"models", "datasets", "seeds", "config_files", "settings", "model_settings",
             "dataset_settings", "ours", "baselines", "metrics", "tune"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid: a model on a dataset with a seed and its settings."""

    model: str
    dataset: str
    seed: object  # an int, or None in a one-seed grid (the settings' own seed)
    overrides: dict

    @property
    def name(self):
        return f"{self.model}-{self.dataset}" + ("" if self.seed is None else f"-seed{self.seed}")

    def describe(self):
        return f"{self.model} on {self.dataset}" + ("" if self.seed is None else f", seed {self.seed}")


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
    tune: dict = None  # None: untuned; else the `searches.tune_section`

    def __post_init__(self):
        self.metrics = [metric.lower() for metric in self.metrics]  # RecBole's result keys
        # a tuned grid's searches, set by `searches`: {(model, dataset): record / setting}
        self.searches, self.tuned = {}, {}

    def cells(self, tuned=True):
        """Every Cell, datasets outermost, then models, then seeds; with `tuned`, a searched
        model's chosen setting on top of its settings. With seeds, a cell's settings carry
        its seed and `reproducibility: True` (unless set): the settings key then differs
        per seed, and finished seeds are never run again."""
        for dataset in self.datasets:
            for model in self.models:
                overrides = {**self.settings, **self.dataset_settings.get(dataset, {}),
                             **self.model_settings.get(model, {}),
                             **(self.tuned.get((model, dataset), {}) if tuned else {})}
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


def load_grid(path=None, models=None, datasets=None, config_files=(), overrides=None,
              tune=None, tool=None, **choices):
    """A Grid from a yaml file and/or flags; flags win, `overrides` join the shared settings.
    `tune` (--tune and its flags: {tool, algo, max_evals, epochs}, None where not given)
    tunes the grid, on top of the file's `tune:` section; `tool` is the search engine where
    neither names one (a Ray grid's: ray)."""
    spec = {}
    if path:
        spec = read_yaml(path, "grid file")
        unknown = set(spec) - GRID_KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a grid file takes "
                              f"{', '.join(sorted(GRID_KEYS))}")
    _check_kinds(spec, path)
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
        at_least("--seeds", choices["seeds"])
        if choices["seeds"] > MAX_SEEDS:
            raise ConfigError(f"--seeds {choices['seeds']}: at most {MAX_SEEDS} seeds (each is "
                              "a training run of every cell)")
        first = spec["settings"].get("seed", 2020)
        if not str(first).lstrip("-").isdigit():
            raise ConfigError(f"seed must be an integer, got {first!r}")
        choices["seeds"] = [int(first) + i for i in range(choices["seeds"])]
    spec.update({k: v for k, v in choices.items() if v})
    if "tune" in spec and spec["tune"] is None:  # `tune:` alone: the defaults
        spec["tune"] = {}
    if tune is not None and isinstance(spec.get("tune") or {}, dict):
        spec["tune"] = {**(spec.get("tune") or {}),
                        **{k: v for k, v in tune.items() if v is not None}}
    if tool and isinstance(spec.get("tune"), dict) and spec["tune"].get("tool") is None:
        spec["tune"]["tool"] = tool
    check_spec(spec, path or "the grid")
    grid = Grid(**spec)
    check_names(grid)  # a typo fails now, not as a failed cell hours later
    return grid


def _check_kinds(spec, where):
    for key, kind in (("models", list), ("datasets", list), ("config_files", list),
                      ("settings", dict), ("model_settings", dict), ("dataset_settings", dict),
                      ("baselines", list), ("metrics", list), ("seeds", list), ("ours", str)):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise ConfigError(f"{where}: `{key}` must be a {kind.__name__}, got "
                              f"{shown(repr(spec[key]))}")


def check_spec(spec, where):
    """ConfigError unless every value of a grid's fields (from a file, flags or grid.json)
    has the type and range a cell needs: before any cell runs, not as an internal error."""
    _check_kinds(spec, where)
    for key in ("models", "datasets", "baselines", "metrics", "config_files"):
        for value in spec.get(key) or []:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: `{key}` must list names, got {shown(repr(value))}")
    for key in ("models", "datasets"):
        twice = [v for v in spec.get(key) or [] if spec[key].count(v) > 1]
        if twice:
            raise ConfigError(f"{where}: `{key}` lists {shown(twice[0])} twice; its cells would "
                              "be trained twice with the same settings: list it once")
    for key in ("settings", "model_settings", "dataset_settings"):
        for name, value in (spec.get(key) or {}).items():
            if not isinstance(name, str):
                raise ConfigError(f"{where}: the keys of `{key}` must be names, got {name!r}")
            if key != "settings" and not isinstance(value, dict):
                raise ConfigError(f"{where}: `{key}` of {shown(name)} must map settings to "
                                  f"values (e.g. {{epochs: 50}}), got {shown(repr(value))}")
    seeds = spec.get("seeds")
    if seeds is not None and (
            not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS
            or not all(type(s) is int and 0 <= s < 2**32 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{where}: `seeds` must be 1 to {MAX_SEEDS} distinct integers from 0 "
                          f"to 2**32 - 1 (numpy's range), got {shown(seeds)} (or --seeds N "
                          "for N seeds)")
    if spec.get("tune") is not None:
        spec["tune"] = tune_section(spec["tune"], where)
    if spec.get("ours") is not None and not isinstance(spec["ours"], str):
        raise ConfigError(f"{where}: `ours` must be a model name, got {spec['ours']!r}")
    for model in spec.get("models") or []:
        for dataset in spec.get("datasets") or []:
            # the longest file name a cell writes: its run folder, a second in the same second
            longest = f"{model}-{dataset}-seed{2**32}-20261231-235959-99.log"
            if len(longest.encode()) > 255:
                raise ConfigError(f"{where}: {shown(model)} on {shown(dataset)}: the names make "
                                  "file names longer than file systems take (255 bytes); "
                                  "use a shorter dataset name")


def check_grid(grid):
    """Build every cell's configuration and check its dataset before any cell runs: a
    typo fails in seconds, not as a failed cell hours later. Shared settings may belong to
    other models of the grid; a model's own settings must be its own. Every cell must
    compute the table's metrics."""
    from recbole_hybrid.config.builder import build_config
    from recbole_hybrid.config.dry_run import check_model
    from recbole_hybrid.data.atomic_files import check_dataset

    for cell in grid.cells():
        if cell.seed not in (None, (grid.seeds or [None])[0]):
            continue  # the other seeds differ in the seed only
        check_keys(cell.model, grid.model_settings.get(cell.model, {}),
                   f"model_settings of {cell.model}")
        config = build_config(cell.model, cell.dataset, grid.config_files, cell.overrides,
                              scope="any")
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


def check_names(grid):
    """The models, `ours`, the baselines and the keys of model_settings and of the params
    files must be model names (a subset of a grid file's models may leave some of them out
    of the grid: no column)."""
    for name in [*grid.models, grid.ours, *grid.baselines, *grid.model_settings,
                 *(grid.tune or {}).get("params_files", {})]:
        registry.check_known(name)
