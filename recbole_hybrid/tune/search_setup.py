"""What every trial of a search shares: the model, the dataset, the absolute config files and
the fixed settings, checked once before the first trial; each trial is one run with its
parameters on top, in `<output>/runs/`."""

import math
import os
import time

from recbole_hybrid.config.builder import build_config
from recbole_hybrid.config.files import dataset_config_file, resolve
from recbole_hybrid.config.keys import check_keys
from recbole_hybrid.data.atomic_files import check_dataset
from recbole_hybrid.tune.space import as_config_values


class SearchSetup:
    """model, dataset, config_files (absolute), overrides (typed, data_path absolute),
    valid_metric, bigger (its direction), seed, show_progress, output and runs_dir (absolute)."""

    def __init__(self, model, dataset, config_files=(), overrides=None, output="tuning"):
        self.output = os.path.abspath(output)
        files = [dataset_config_file(dataset)] + [os.path.abspath(resolve(f)) for f in config_files]
        self.config_files = [f for f in files if f]
        config = build_config(model, dataset, self.config_files, overrides)  # fails early
        check_dataset(config)
        self.model, self.dataset = config["model"], config["dataset"]
        # Typed as RecBole reads them ("2" -> 2), so best.yaml holds numbers, not strings; and
        # trials run elsewhere (Ray workers, another folder): no path may depend on the cwd.
        self.overrides = {**config._convert_config_dict(dict(overrides or {})),
                          "data_path": os.path.dirname(os.path.abspath(config["data_path"]))}
        self.valid_metric = config["valid_metric"]
        self.seed = config["seed"]  # also the search's: the same command proposes the same trials
        self.show_progress = bool(config["show_progress"])
        self.bigger = config["valid_metric_bigger"]
        self.runs_dir = os.path.join(self.output, "runs")

    def check_space(self, space):
        """Every parameter of the params file's Space is a setting of the model, and its
        extreme values are accepted (a message names the file's line)."""
        check_keys(self.model, space, f"the params file {space.path}")
        for name, (kind, value) in space.items():
            points = (value if kind == "choice" else
                      [math.exp(v) for v in value[:2]] if kind == "loguniform" else value[:2])
            for point in points:
                point = as_config_values({name: point}, space)
                build_config(self.model, self.dataset, self.config_files,
                             {**self.overrides, **point}, sources={name: space.where(name)})

    def run_trial(self, params, callback=None):
        """One trial: a run with `params` on top of the fixed settings; its result dict,
        with its wall time in `seconds`."""
        from recbole_hybrid.quick_start.runner import run

        started = time.time()
        result = run(self.model, self.dataset, self.config_files, {**self.overrides, **params},
                     output_dir=self.runs_dir, callback=callback)
        return {**result, "seconds": time.time() - started}
