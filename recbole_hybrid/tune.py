"""Hyperparameter search for any model: RecBole's HyperTuning (hyperopt) or Ray Tune.

Both read RecBole's params file, one parameter per line:

    learning_rate loguniform -8,-5      # exp(-8) .. exp(-5), hyperopt's convention
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1             # integral values become ints
    d_state choice [16,32,64]

Each trial is one `recbole_hybrid.run` into `<output>/runs/` with the fixed settings, the
trial's parameters on top. What a search leaves in `<output>`:
- trials.md and trials.csv: every trial, finished ones first by their best valid score,
  then those ASHA stopped, the failed ones and (interrupted) the unfinished ones;
- best.yaml: the best trial's whole configuration (model, dataset, the settings, its
  parameters), which `run_recbole_hybrid.py --config_files best.yaml` takes as is;
- hyperopt: trials.jsonl (each trial appended as it ends) and RecBole's own export,
  hyperopt_results.txt; ray: ray/search/, Ray Tune's experiment (what `--resume` continues).
"""

import csv
import math
import os

import yaml

from recbole_hybrid import jsonl
from recbole_hybrid.errors import ConfigError, Interrupted, UserError, last_line
from recbole_hybrid.outputs import replaced_atomically, writable_folder, write_text_atomically

TOOLS = ("hyperopt", "ray")
ALGOS = ("exhaustive", "random", "bayes")
EXPERIMENT = "search"


def read_params_file(path):
    """{name: (kind, value)}, kind in choice/uniform/quniform/loguniform; clear errors."""
    if not os.path.isfile(path):
        raise UserError(f"params file {path} is a folder" if os.path.isdir(path) else
                        f"params file not found: {path}")
    space = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError:
        raise ConfigError(f"params file {path} is not a text (utf-8) file") from None
    for number, line in enumerate(lines, 1):
        words = line.split("#")[0].split()
        if not words:
            continue
        if len(words) < 3:
            raise ConfigError(f"{path}:{number}: expected 'name kind values', got {line.strip()!r}")
        name, kind, text = words[0], words[1], "".join(words[2:])
        if name in space:
            raise ConfigError(f"{path}:{number}: {name} is given twice; keep one line for it")
        try:
            space[name] = (kind, _parse_values(kind, text))
        except (ValueError, yaml.YAMLError) as error:
            expected = str(error).splitlines()[0]
            raise ConfigError(f"{path}:{number}: {name} {kind} {text!r}: expected {expected}") from None
    if not space:
        raise ConfigError(f"{path}: no parameters (one per line: 'name kind values')")
    return space


def _parse_values(kind, text):
    """The values of one params-file line; ValueError says what was expected."""
    if kind == "choice":
        value = yaml.safe_load(text)
        if not isinstance(value, list) or not value:
            raise ValueError("a non-empty list like [16,32]")
        return value
    if kind not in ("uniform", "loguniform", "quniform"):
        raise ValueError("a kind among choice, uniform, quniform, loguniform")
    shape = "low,high,q with low < high and q > 0" if kind == "quniform" else "low,high with low < high"
    try:
        value = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"numbers: {shape}") from None
    if len(value) != (3 if kind == "quniform" else 2) or value[0] >= value[1] or \
            (kind == "quniform" and value[2] <= 0):
        raise ValueError(shape)
    return value


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
        from recbole_hybrid.settings import build_config, dataset_config_file

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

    def check_space(self, space, params_file):
        """Every parameter is a setting of the model, and its extreme values are accepted."""
        from recbole_hybrid.settings import build_config
        from recbole_hybrid.validate import check_keys

        check_keys(self.model, space, f"the params file {params_file}")
        for name, (kind, value) in space.items():
            points = (value if kind == "choice" else
                      [math.exp(v) for v in value[:2]] if kind == "loguniform" else value[:2])
            for point in points:
                point = as_config_values({name: point}, space)
                build_config(self.model, self.dataset, self.config_files,
                             {**self.overrides, **point})

    def recorded_trials(self):
        """The trials appended to trials.jsonl so far (a hyperopt search's own record)."""
        return jsonl.read(os.path.join(self.output, "trials.jsonl"), ("params", "status"))[0]

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
        with replaced_atomically(os.path.join(self.output, "trials.csv")) as partial, \
                open(partial, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header + ["results_file", "error"]] + [
                row + [t.get("results_file"), t.get("error")] for row, t in zip(rows, trials)])
        lines = [f"{self.model} on {self.dataset}, sorted by best valid {self.valid_metric}", "",
                 "| " + " | ".join(header + ["error"]) + " |", "|" + " --- |" * (len(header) + 1)]
        lines += ["| " + " | ".join([_fmt(v) for v in row] + [last_line(t.get("error")).replace("|", "/")]) + " |"
                  for row, t in zip(rows, trials)]
        write_text_atomically(os.path.join(self.output, "trials.md"), "\n".join(lines) + "\n")
        best = trials[0] if trials and trials[0]["status"] == "ok" else None
        if best:
            self.write_best_yaml(best["params"])
        return best

    def write_best_yaml(self, params):
        from recbole_hybrid.settings import read_yamls

        settings = {**read_yamls(self.config_files), **self.overrides, **params,
                    "model": self.model, "dataset": self.dataset}
        settings = {k: _plain(v) for k, v in settings.items()}
        path = os.path.join(self.output, "best.yaml")
        write_text_atomically(path, f"# best trial of the search in {self.output}\n"
                              + yaml.safe_dump(settings, sort_keys=True))
        return path


def tune(model, dataset, params_file, tool="hyperopt", algo="exhaustive", max_evals=10,
         config_files=(), overrides=None, output="tuning", *, ray_address=None, resume=False,
         cpus_per_trial=1, gpus_per_trial=None, max_failures=1, log=print):
    """Runs the search; returns the best finished trial's dict (UserError if every trial
    failed, None if none finished, e.g. all stopped early).
    Everything is checked before the first trial; an interrupted search writes its tables
    from the finished trials and raises Interrupted."""
    if tool not in TOOLS:
        raise ConfigError(f"--tool={tool}: choose one of {', '.join(TOOLS)}")
    if algo not in ALGOS:
        raise ConfigError(f"--algo={algo}: choose one of {', '.join(ALGOS)}")
    for name, value, least in (("--max_evals", max_evals, 1), ("--cpus_per_trial", cpus_per_trial, 1),
                               ("--gpus_per_trial", gpus_per_trial or 0, 0),
                               ("--max_failures", max_failures, 0)):
        if value < least:
            raise ConfigError(f"{name}={value}: must be at least {least}")
    if tool == "hyperopt" and resume:
        raise UserError("--resume continues Ray Tune experiments; a hyperopt search "
                        "starts again (its finished trials are in trials.jsonl)")
    space = read_params_file(params_file)
    ranges = [name for name, (kind, _) in space.items() if kind != "choice"]
    if algo == "exhaustive" and ranges:
        raise ConfigError(f"an exhaustive search needs choices only; {', '.join(ranges)} "
                          "are ranges: use --algo=random or --algo=bayes")
    search = Search(model, dataset, config_files, overrides, output)
    search.check_space(space, params_file)
    if tool == "hyperopt":
        earlier = [n for n in ("trials.jsonl", "best.yaml", "trials.md") if
                   os.path.exists(os.path.join(search.output, n))]
        if earlier:
            raise UserError(f"{search.output} holds an earlier search ({', '.join(earlier)}); a "
                            "second search would overwrite it: pass another --output")
    elif resume and not os.path.isfile(os.path.join(search.output, "ray", EXPERIMENT, "tuner.pkl")):
        raise UserError(f"--resume: no Ray Tune experiment in {search.output}/ray/{EXPERIMENT}; "
                        "pass the --output of the search to continue")
    writable_folder(search.output)
    os.makedirs(search.output, exist_ok=True)
    if tool == "hyperopt":
        from recbole_hybrid.tune_hyperopt import run_hyperopt

        try:
            trials, interrupted = run_hyperopt(search, params_file, space, algo, max_evals, log), False
        except KeyboardInterrupt:  # the trials that ended are in trials.jsonl
            trials, interrupted = search.recorded_trials(), True
        how_to_go_on = "a hyperopt search does not resume: run it again with another --output"
    else:
        from recbole_hybrid.tune_ray import run_ray

        trials = run_ray(search, space, algo, max_evals, ray_address=ray_address, resume=resume,
                         cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                         max_failures=max_failures, log=log)
        interrupted = any(t["status"] == "unfinished" for t in trials)
        how_to_go_on = "continue it with the same command and --resume"
    best = search.write_outputs(trials)
    done = sum(t["status"] == "ok" for t in trials)
    best_text = (f"; best valid {search.valid_metric} {best['best_valid_score']:.4f} with "
                 f"{best['params']}: {search.output}/best.yaml" if best else "")
    if interrupted:
        raise Interrupted(f"interrupted after {done} finished trial(s) (table: "
                          f"{search.output}/trials.md{best_text}); {how_to_go_on}")
    if trials and all(t["status"] == "failed" for t in trials):
        raise UserError(f"every trial failed ({last_line(trials[0]['error'])}); "
                        f"{search.output}/trials.md lists them. Fix the space or the settings")
    log(f"{done} of {len(trials)} trials finished; table: {search.output}/trials.md{best_text}")
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

