"""The Ray Tune engine (`tune.Tuner`), on Ray 2.6 and current Ray (compat.ray_tune_api).

Each trial is a function trainable that runs `recbole_hybrid.run` and reports the valid
score after every epoch through RecBole's `callback_fn`, so ASHA stops bad trials early.
Trials get `cpus_per_trial` CPUs (and as many torch threads) and, where the cluster has
GPUs, `gpus_per_trial` GPUs (default 1; a fraction shares a GPU). RecBole's Config would
point CUDA_VISIBLE_DEVICES at its `gpu_id` (default "0"): each trial passes the GPU Ray gave
it instead. The experiment lives in `<output>/ray/search`; `resume` restores it and runs
only the trials that had not finished.
"""

import math
import os
import traceback

from recbole_hybrid.errors import UserError
from recbole_hybrid.tune.space import as_config_values, as_params_dict
from recbole_hybrid.tune.trials import trial_record
from recbole_hybrid.utils.processes import start_worker
from recbole_hybrid.utils.ray_cluster import assigned_devices, connected

HOW_TO_GO_ON = "continue it with the same command and --resume"
EXPERIMENT = "search"  # <output>/ray/search: Ray Tune's experiment, what --resume continues


def experiment_path(setup):
    return os.path.join(setup.output, "ray", EXPERIMENT)


def started(output):
    return os.path.isfile(os.path.join(output, "ray", EXPERIMENT, "tuner.pkl"))


def check_output(setup, resume):
    """--resume needs the experiment of an earlier search; without it, none may be there."""
    path = experiment_path(setup)
    exists = started(setup.output)
    if resume and not exists:
        raise UserError(f"--resume: no Ray Tune experiment in {path}; pass the --output of "
                        "the search to continue")
    if exists and not resume:
        raise UserError(f"{path} holds a Ray Tune experiment already: pass --resume to continue "
                        "it, or another --output for a new search")


def ray_space(space, algo):
    """The params file's space in Ray Tune's terms (hyperopt's own for bayes)."""
    from ray import tune

    if algo == "exhaustive":  # tune() has checked that every parameter is a choice
        return {name: tune.grid_search(values) for name, (_, values) in space.items()}
    make = {
        "choice": lambda v: tune.choice(v),
        "uniform": lambda v: tune.uniform(*v),
        # Ray 2.6's quniform does not quantize when q == 1: integral ranges use qrandint
        "quniform": lambda v: (tune.qrandint(*(int(x) for x in v))
                               if all(x.is_integer() for x in v) else tune.quniform(*v)),
        "loguniform": lambda v: tune.loguniform(math.exp(v[0]), math.exp(v[1])),
    }
    return {name: make[kind](value) for name, (kind, value) in space.items()}


def trainable(config, setup, space, cpus):
    """One trial, in a Ray worker: its cwd and argv are Ray's, so nothing here uses them."""
    import recbole_hybrid  # noqa: F401  (the fixes and the models, in this worker)
    from recbole_hybrid.compat import ray_tune_api

    report_metrics = ray_tune_api().report
    start_worker(threads=max(1, int(cpus)))  # Ray owns the worker's lifetime and signals
    params = as_config_values(config, space)
    device = assigned_devices()

    def report(epoch, valid_score):
        report_metrics({"valid_score": float(valid_score), "epoch": epoch})

    result = setup.run_trial({**params, **device}, callback=report)
    report_metrics({"valid_score": float(result["best_valid_score"]), "final": 1,
                    "results_file": result["results_file"], "epochs_run": result["epochs_run"],
                    **{f"test/{k}": float(v) for k, v in result["test_result"].items()}})


def run(setup, space, algo, max_evals, options, log):
    """Ray Tune over the space with ASHA; (trials, interrupted), where an interrupted
    search's unfinished trials are in `trials` as such (see check_output for `resume`)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from recbole_hybrid.compat import ray_tune_api

    resume = options["resume"]
    cpus_per_trial, gpus_per_trial = options["cpus_per_trial"], options["gpus_per_trial"]
    path = experiment_path(setup)
    with connected(options["ray_address"]):
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_trial is None:
            gpus_per_trial = 1 if gpus else 0
        if gpus_per_trial > gpus:
            raise UserError(f"--gpus_per_trial={gpus_per_trial}, but the Ray cluster has {gpus:g} GPUs")
        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        function = tune.with_resources(
            tune.with_parameters(trainable, setup=setup, space=space, cpus=cpus_per_trial),
            resources)
        mode = "max" if setup.bigger else "min"
        if resume:
            tuner = tune.Tuner.restore(path, trainable=function, resume_unfinished=True,
                                       resume_errored=True)
            log(f"resuming the Ray Tune experiment in {path}")
        else:
            api = ray_tune_api()
            tuner = tune.Tuner(
                function,
                # bayes: the space lives in HyperOptSearch, which refuses a second one here
                param_space={} if algo == "bayes" else ray_space(space, algo),
                tune_config=tune.TuneConfig(
                    metric="valid_score", mode=mode,
                    num_samples=1 if algo == "exhaustive" else max_evals,
                    scheduler=ASHAScheduler(time_attr="training_iteration", grace_period=1,
                                            reduction_factor=2,
                                            max_t=int(setup.overrides.get("epochs", 300)) + 1),
                    search_alg=_search_alg(space, algo, mode),
                ),
                run_config=api.RunConfig(
                    name=EXPERIMENT, storage_path=os.path.dirname(path),
                    failure_config=api.FailureConfig(max_failures=options["max_failures"]),
                    verbose=1,
                ),
            )
            log(f"Ray Tune {algo} search of {setup.model} on {setup.dataset} with ASHA, "
                f"{resources} per trial, on {ray.cluster_resources().get('CPU', 0):g} CPUs / "
                f"{gpus:g} GPUs")
        results = tuner.fit()
        # Ctrl-C makes Ray stop gracefully and return: its unfinished trials are not results
        # (a ResultGrid lists its results in the order of its analysis' trials)
        saved = _saved_statuses(path)
        statuses = [saved.get(trial.trial_id, trial.status)
                    for trial in results._experiment_analysis.trials]
        trials = [_trial(result, space, status, setup.bigger)
                  for result, status in zip(results, statuses)]
        unfinished = sum(t["status"] == "unfinished" for t in trials)
        if unfinished:
            log(f"interrupted with {unfinished} trials unfinished: continue with --resume")
        return trials, unfinished > 0


def _saved_statuses(path):
    """{trial id: status} in the experiment state Ray saved as fit() ended. On an interruption
    Ray saves the unfinished trials as PENDING / RUNNING and only then stops them, after which
    their live status, TERMINATED, looks like that of a trial ASHA stopped."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(path)
    analysis.get_all_configs()  # Ray 2.6 reads the saved trials on first use
    return {trial.trial_id: trial.status for trial in analysis.trials}


def _search_alg(space, algo, mode):
    if algo != "bayes":
        return None
    from ray.tune.search.hyperopt import HyperOptSearch
    from recbole.trainer import HyperTuning

    return HyperOptSearch(space=HyperTuning._build_space_from_dict(as_params_dict(space)),
                          metric="valid_score", mode=mode)


def _trial(result, space, status, bigger):
    params = as_config_values(result.config or {}, space)
    if status in ("PENDING", "RUNNING", "PAUSED"):
        return {"params": params, "status": "unfinished"}
    if result.error is not None:
        return trial_record(params, error="".join(traceback.format_exception_only(result.error)))
    history = result.metrics_dataframe
    scores = history["valid_score"].dropna() if history is not None else []
    final = result.metrics or {}
    if not len(scores):
        return trial_record(params, error="no epoch was reported")
    best_reported = scores.max() if bigger else scores.min()
    record = trial_record(params, {
        "best_valid_score": float(final["valid_score"] if final.get("final") else best_reported),
        "test_result": {k[5:]: v for k, v in final.items() if k.startswith("test/")},
        "results_file": final.get("results_file"),
        # an ASHA-stopped trial ran to its last reported epoch (epochs count from 0)
        "epochs_run": final.get("epochs_run") if final.get("final")
        else int(history["epoch"].max()) + 1,
        "seconds": final.get("time_total_s"),
    })
    if not final.get("final"):
        record["status"] = "stopped"  # ASHA stopped it: scored by its best reported epoch
    return record
