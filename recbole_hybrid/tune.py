"""Hyperparameter search for any model: RecBole's HyperTuning (hyperopt) or Ray Tune.

Both read RecBole's params file, one parameter per line:

    learning_rate loguniform -8,-5      # exp(-8) .. exp(-5), hyperopt's convention
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1             # integral values become ints
    d_state choice [16,32,64]

Each trial is one `recbole_hybrid.run` into `<output>/runs/` with the fixed settings, the
trial's parameters on top. What a search leaves in `<output>`:
- trials.md and trials.csv: every trial sorted by its best valid score (failed ones last);
- best.yaml: the best trial's whole configuration (model, dataset, the settings, its
  parameters), which `run_recbole_hybrid.py --config_files best.yaml` takes as is;
- hyperopt: trials.jsonl (each trial appended as it ends) and RecBole's own export,
  hyperopt_results.txt; ray: ray/search/, Ray Tune's experiment (what `--resume` continues).
"""

import csv
import json
import math
import os

import yaml

from recbole_hybrid.errors import ConfigError, UserError

TOOLS = ("hyperopt", "ray")
ALGOS = ("exhaustive", "random", "bayes")
EXPERIMENT = "search"


def read_params_file(path):
    """{name: (kind, value)}, kind in choice/uniform/quniform/loguniform; clear errors."""
    if not os.path.isfile(path):
        raise UserError(f"params file not found: {path}")
    space = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            words = line.split("#")[0].split()
            if not words:
                continue
            if len(words) < 3:
                raise ConfigError(f"{path}:{number}: expected 'name kind values', got {line.strip()!r}")
            name, kind, text = words[0], words[1], "".join(words[2:])
            try:
                if kind == "choice":
                    value = yaml.safe_load(text)
                    if not isinstance(value, list) or not value:
                        raise ValueError("a non-empty list like [16,32]")
                elif kind in ("uniform", "loguniform"):
                    value = tuple(float(v) for v in text.split(","))
                    if len(value) != 2 or value[0] >= value[1]:
                        raise ValueError("low,high with low < high")
                elif kind == "quniform":
                    value = tuple(float(v) for v in text.split(","))
                    if len(value) != 3 or value[0] >= value[1] or value[2] <= 0:
                        raise ValueError("low,high,q with low < high and q > 0")
                else:
                    raise ValueError("a kind among choice, uniform, quniform, loguniform")
            except (ValueError, yaml.YAMLError) as error:
                raise ConfigError(f"{path}:{number}: {name} {kind} {text!r}: expected {error}") from None
            space[name] = (kind, value)
    if not space:
        raise ConfigError(f"{path}: no parameters (one per line: 'name kind values')")
    return space


def as_config_values(params, space):
    """Trial values as RecBole wants them: quniform (and integral choices) as ints."""
    values = {}
    for name, value in params.items():
        if space.get(name, ("",))[0] == "quniform" and float(value).is_integer():
            value = int(value)
        values[name] = value.item() if hasattr(value, "item") else value
    return values


class Search:
    """What every trial shares: model, dataset, absolute config files and settings."""

    def __init__(self, model, dataset, config_files=(), overrides=None, output="tuning"):
        from recbole_hybrid.datasets import check_dataset
        from recbole_hybrid.runner import build_config, dataset_config_file

        self.output = os.path.abspath(output)
        files = [dataset_config_file(dataset)] + [os.path.abspath(f) for f in config_files]
        self.config_files = [f for f in files if f]
        config = build_config(model, dataset, self.config_files, overrides)  # fails early
        check_dataset(config)
        self.model, self.dataset = config["model"], config["dataset"]
        # Typed as RecBole reads them ("2" -> 2), so best.yaml holds numbers, not strings; and
        # trials run elsewhere (Ray workers, another folder): no path may depend on the cwd.
        self.overrides = {**config._convert_config_dict(dict(overrides or {})),
                          "data_path": os.path.dirname(os.path.abspath(config["data_path"]))}
        self.valid_metric = config["valid_metric"]
        self.bigger = config["valid_metric_bigger"]
        self.runs_dir = os.path.join(self.output, "runs")

    def run_trial(self, params, callback=None):
        from recbole_hybrid.runner import run

        return run(self.model, self.dataset, self.config_files, {**self.overrides, **params},
                   output_dir=self.runs_dir, callback=callback)

    def write_outputs(self, trials):
        """trials: dicts with params, status, best_valid_score, test_result, results_file, error."""
        sign = 1 if self.bigger else -1
        # stopped: ASHA ended it early; unfinished: the search was interrupted (Ray)
        order = {"ok": 0, "stopped": 1, "failed": 2, "unfinished": 3}
        trials = sorted(trials, key=lambda t: (order[t["status"]],
                                               -sign * (t.get("best_valid_score") or 0)))
        names = sorted({name for t in trials for name in t["params"]})
        metrics = sorted({m for t in trials if t["status"] == "ok" for m in t["test_result"]})
        header = names + ["status", f"best valid {self.valid_metric.lower()}"] + [
            f"test {m}" for m in metrics]
        rows = [[t["params"].get(n) for n in names] + [t["status"], t.get("best_valid_score")]
                + [t.get("test_result", {}).get(m) for m in metrics] for t in trials]
        with open(os.path.join(self.output, "trials.csv"), "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header + ["results_file", "error"]] + [
                row + [t.get("results_file"), t.get("error")] for row, t in zip(rows, trials)])
        lines = [f"{self.model} on {self.dataset}, sorted by best valid {self.valid_metric}", "",
                 "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        with open(os.path.join(self.output, "trials.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        best = trials[0] if trials and trials[0]["status"] == "ok" else None
        if best:
            self.write_best_yaml(best["params"])
        return best

    def write_best_yaml(self, params):
        from recbole_hybrid.runner import read_yamls

        settings = {**read_yamls(self.config_files), **self.overrides, **params,
                    "model": self.model, "dataset": self.dataset}
        settings = {k: _plain(v) for k, v in settings.items()}
        path = os.path.join(self.output, "best.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# best trial of the search in {self.output}\n")
            yaml.safe_dump(settings, f, sort_keys=True)
        return path


def tune(model, dataset, params_file, tool="hyperopt", algo="exhaustive", max_evals=10,
         config_files=(), overrides=None, output="tuning", *, ray_address=None, resume=False,
         cpus_per_trial=1, gpus_per_trial=None, max_failures=1, log=print):
    """Runs the search; returns the best trial's dict (None if every trial failed)."""
    if tool not in TOOLS:
        raise ConfigError(f"--tool={tool}: choose one of {', '.join(TOOLS)}")
    if algo not in ALGOS:
        raise ConfigError(f"--algo={algo}: choose one of {', '.join(ALGOS)}")
    if max_evals < 1:
        raise ConfigError(f"--max_evals={max_evals}: needs at least one trial")
    space = read_params_file(params_file)
    ranges = [name for name, (kind, _) in space.items() if kind != "choice"]
    if algo == "exhaustive" and ranges:
        raise ConfigError(f"an exhaustive search needs choices only; {', '.join(ranges)} "
                          "are ranges: use --algo=random or --algo=bayes")
    search = Search(model, dataset, config_files, overrides, output)
    os.makedirs(search.output, exist_ok=True)
    if tool == "hyperopt":
        from recbole_hybrid.tune_hyperopt import run_hyperopt

        if resume:
            raise UserError("--resume continues Ray Tune experiments; a hyperopt search "
                            "starts again (its finished trials are in trials.jsonl)")
        trials = run_hyperopt(search, params_file, space, algo, max_evals, log)
    else:
        from recbole_hybrid.tune_ray import run_ray

        trials = run_ray(search, space, algo, max_evals, ray_address=ray_address, resume=resume,
                         cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                         max_failures=max_failures, log=log)
    best = search.write_outputs(trials)
    done = sum(t["status"] == "ok" for t in trials)
    log(f"{done} of {len(trials)} trials finished; table: {search.output}/trials.md"
        + (f"; best valid {search.valid_metric} {best['best_valid_score']:.4f} with "
           f"{best['params']}: {search.output}/best.yaml" if best else "; no trial succeeded"))
    return best


def _fmt(value):
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


def trial_record(params, result=None, error=None):
    if error is not None:
        return {"params": params, "status": "failed", "error": error}
    return {"params": params, "status": "ok", "best_valid_score": result["best_valid_score"],
            "test_result": result["test_result"], "results_file": result["results_file"]}


def append_jsonl(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
