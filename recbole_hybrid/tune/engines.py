"""The search engines of `tune`, by the name `--tool` takes. An engine is one module with

    HOW_TO_GO_ON: str                     # the advice when a search of it is interrupted
    check_output(setup, resume)           # UserError for an output it must not write into
    started(output) -> bool               # an earlier search of it lies in output (to resume)
    run(setup, space, algo, max_evals, options, log) -> (trials, interrupted)

`setup` is the search's SearchSetup, `space` its parsed params file, `options` the engine
flags of `tune` (resume, ray_address, cpus_per_trial, gpus_per_trial, max_failures), and
`trials` the trial dicts of `tune.trials`. A new engine is a module and an entry here.
"""

import importlib

ENGINES = {
    "hyperopt": "recbole_hybrid.tune.hyperopt_engine",  # RecBole's HyperTuning, one trial at a time
    "ray": "recbole_hybrid.tune.ray_engine",  # Ray Tune, parallel trials, ASHA
}
ALGOS = ("exhaustive", "random", "bayes")


def engine(name):
    """The module of the engine `name` (a key of ENGINES)."""
    return importlib.import_module(ENGINES[name])
