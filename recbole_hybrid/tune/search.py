"""`tune`: a hyperparameter search of any model with one of the engines of `tune.engines`
(RecBole's HyperTuning, i.e. hyperopt; or Ray Tune), every trial one run. Everything is
checked before the first trial; the tables and best.yaml (`tune.trials`) are written from
the trials whether the search ends or is interrupted.
"""

import os

from recbole_hybrid.config.values import at_least, positive
from recbole_hybrid.errors import ConfigError, Interrupted, UserError, last_line
from recbole_hybrid.tune import trials as trial_files
from recbole_hybrid.tune.engines import ALGOS, ENGINES, engine
from recbole_hybrid.tune.search_setup import SearchSetup
from recbole_hybrid.tune.space import read_params_file
from recbole_hybrid.utils.files import writable_folder


def tune(model, dataset, params_file, tool="hyperopt", algo="exhaustive", max_evals=10,
         config_files=(), overrides=None, output="tuning", *, ray_address=None, resume=False,
         cpus_per_trial=1, gpus_per_trial=None, max_failures=1, log=print):
    """Runs the search; returns the best finished trial's dict, with the `budget` the whole
    search spent: {"trials", "epochs", "seconds"} (UserError if every trial failed, None if
    none finished, e.g. all stopped early). An interrupted search writes its tables from
    the finished trials and raises Interrupted."""
    if tool not in ENGINES:
        raise ConfigError(f"--tool={tool}: choose one of {', '.join(ENGINES)}")
    positive("--cpus_per_trial", cpus_per_trial)
    for name, value, least in (("--max_evals", max_evals, 1),
                               ("--gpus_per_trial", gpus_per_trial or 0, 0),
                               ("--max_failures", max_failures, 0)):
        at_least(name, value, least)
    search_engine = engine(tool)
    space = read_space(params_file, algo)
    setup = SearchSetup(model, dataset, config_files, overrides, output)
    setup.check_space(space)
    search_engine.check_output(setup, resume)
    writable_folder(setup.output)
    os.makedirs(setup.output, exist_ok=True)
    options = dict(resume=resume, ray_address=ray_address, cpus_per_trial=cpus_per_trial,
                   gpus_per_trial=gpus_per_trial, max_failures=max_failures)
    trials, interrupted = search_engine.run(setup, space, algo, max_evals, options, log)
    best = trial_files.write_outputs(setup, trials)
    done = sum(t["status"] == "ok" for t in trials)
    best_text = (f"; best valid {setup.valid_metric} {best['best_valid_score']:.4f} with "
                 f"{best['params']}: {setup.output}/best.yaml" if best else "")
    if interrupted:
        raise Interrupted(f"interrupted after {done} finished trial(s) (table: "
                          f"{setup.output}/trials.md{best_text}); {search_engine.HOW_TO_GO_ON}")
    if trials and all(t["status"] == "failed" for t in trials):
        raise UserError(f"every trial failed ({last_line(trials[0]['error'])}); "
                        f"{setup.output}/trials.md lists them. Fix the space or the settings")
    log(f"{done} of {len(trials)} trials finished; table: {setup.output}/trials.md{best_text}")
    return best and {**best, "budget": {
        "trials": len(trials), "epochs": sum(t.get("epochs_run") or 0 for t in trials),
        "seconds": sum(t.get("seconds") or 0 for t in trials)}}


def read_space(params_file, algo):
    """The params file's Space, checked for `algo` (an exhaustive search takes choices only)."""
    if algo not in ALGOS:
        raise ConfigError(f"--algo={algo}: choose one of {', '.join(ALGOS)}")
    space = read_params_file(params_file)
    ranges = [name for name, (kind, _) in space.items() if kind != "choice"]
    if algo == "exhaustive" and ranges:
        raise ConfigError(f"an exhaustive search needs choices only; {', '.join(ranges)} "
                          "are ranges: use --algo=random or --algo=bayes")
    return space
