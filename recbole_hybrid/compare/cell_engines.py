"""The engines that run a grid's cells, by the name `compare --engine` takes. An engine is one
module with

    OPTIONS: {name: default}              # its options, the flags of the same name
    check(options)                        # ConfigError for a bad option, before anything starts
    connected(options)                    # context around the searches and cells (Ray's connection)
    describe(options, todo) -> str        # how `todo` cells run, for the first line of the log
    search_options(options) -> {...}      # what a tuned grid's searches pass to `tune`
    run_cells(cells, config_files, output, options, on_done)

A new engine is a module and an entry here.
"""

import importlib

from recbole_hybrid.errors import ConfigError

ENGINES = {
    "local": "recbole_hybrid.compare.cell_processes",  # fresh processes on this machine
    "ray": "recbole_hybrid.compare.cell_ray",  # Ray tasks, on a local Ray or a cluster
}


def engine(name):
    """The module of the engine `name` (ConfigError for an unknown name)."""
    if name not in ENGINES:
        raise ConfigError(f"--engine {name}: choose one of {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[name])


def engine_options(name, given):
    """The options of engine `name`: its defaults, with `given` ({name: value or None})
    on top, checked; a given option of another engine is a ConfigError."""
    module = engine(name)
    foreign = [k for k, v in given.items() if v is not None and k not in module.OPTIONS]
    if foreign:
        owners = {k: n for n in ENGINES for k in engine(n).OPTIONS}
        raise ConfigError(
            ", ".join(f"--{k}" for k in foreign) + (" applies" if len(foreign) == 1 else " apply")
            + f" to --engine {owners.get(foreign[0], '?')}"
            f", not {name}" + (": Ray runs as many cells at once as the cluster's CPUs (and "
                               "GPUs) allow for --cpus_per_cell" if "jobs" in foreign else ""))
    options = {**module.OPTIONS, **{k: v for k, v in given.items() if v is not None}}
    module.check(options)
    return options
