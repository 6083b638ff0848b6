"""The `recbole-hybrid` command. Subcommands: `run` (train and evaluate one model),
`compare` (a grid of models x datasets into one table), `tune` (hyperparameter search),
`convert` (raw interaction files to RecBole atomic files), and from `cli.recommend`:
`recommend` (top-k lists), `export` (a model bundle), `serve` (the HTTP service)."""

import argparse
import datetime
import errno
import os
import signal
import sys
import tempfile
import traceback

from recbole_hybrid.errors import Interrupted, UserError, last_line
from recbole_hybrid.cli.common import config_files, no_settings, print_line, subparser
from recbole_hybrid.utils.processes import (
    handle_sigterm_as_sigint, sigterm_as_interrupt, signals_held)

EXIT_USER_ERROR, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 2, 1, 130
# the machine's, not the code's: a full disk, a file or folder the user may not read or write
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, like every other error of the command."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def _add_run_parser(subparsers):
    parser = subparser(
        subparsers, "run", "train and evaluate one model on one dataset",
        (
            "Train and evaluate one model (a recbole-hybrid model or any RecBole model) on one "
            "dataset. Any other --key=value sets a RecBole config key, e.g. --epochs=5 "
            "--learning_rate=0.002 --data_path=/data. Precedence: the model's defaults < "
            "properties/dataset/<dataset>.yaml < --config_files (in order) < --key=value."
        ),
        _run,
    )
    from recbole_hybrid.config import DEFAULT_DATASET, DEFAULT_MODEL

    parser.add_argument("--model", default=None, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--dataset", default=None, help=f"dataset name (default {DEFAULT_DATASET}, shipped)"
    )
    parser.add_argument(
        "--config_files", nargs="+", default=[],
        help="yaml files, in order of precedence (space-separated, as in RecBole)",
    )
    parser.add_argument("--output_dir", default="runs", help="where run folders go (default runs/)")
    parser.add_argument("--resume", default=None, help="checkpoint (.pth) of a run to continue")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node")
    parser.add_argument("--ip", default="localhost", help="address of the rank-0 node")
    parser.add_argument("--port", default="5678", help="port of the rank-0 node")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all nodes")
    parser.add_argument("--group_offset", type=int, default=0, help="first global rank of this node")


def _run(args, overrides):
    from recbole_hybrid.quick_start.run_folder import format_results
    from recbole_hybrid.quick_start.runner import run

    result = run(
        args.model, args.dataset, config_files(args), overrides,
        resume=args.resume, output_dir=args.output_dir, nproc=args.nproc,
        world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
    )
    print(format_results(result))
    print(f"results: {result['results_file']}")
    if result["checkpoint"]:
        print(f"best checkpoint: {result['checkpoint']}")


def _add_compare_parser(subparsers):
    from recbole_hybrid.compare.cell_engines import ENGINES
    from recbole_hybrid.compare.grid import DEFAULT_MODELS

    parser = subparser(
        subparsers, "compare", "train a grid of models x datasets and tabulate them",
        (
            "Train and evaluate every model on every dataset, each cell in a fresh process, "
            "appending each finished cell to OUTPUT/results.jsonl: a second run resumes, "
            "skipping finished cells. Writes table.md/.csv/.tex, metrics.png, efficiency.png. "
            "--key=value settings apply to every cell."
        ),
        _compare,
    )
    parser.add_argument("--grid", default=None, help="grid yaml (models, datasets, settings, ...)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="run every cell with N seeds (the settings' seed, +1, ...): mean ± std, "
                        "confidence intervals and paired significance tests")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local engine: cells at a time (default 1; several share a GPU or "
                        "the CPU cores)")
    parser.add_argument("--engine", default="local", choices=list(ENGINES),
                        help="local: fresh processes on this machine (default); ray: every cell "
                        "(and, with --tune, every trial) a Ray task, on a local Ray or the "
                        "cluster at --ray_address")
    parser.add_argument("--ray_address", default=None,
                        help="ray: join a running Ray cluster (e.g. 10.0.0.1:6379); default: a "
                        "local Ray")
    parser.add_argument("--cpus_per_cell", type=float, default=None,
                        help="ray: CPUs per cell (default 1; torch threads: its whole part)")
    parser.add_argument("--gpus_per_cell", type=float, default=None,
                        help="ray: GPUs per cell (default 1 where the cluster has GPUs; 0.5 "
                        "shares one)")
    parser.add_argument("--max_failures", type=int, default=None,
                        help="ray: runs again of a cell that failed other than by the user's "
                        "error (default 1)")
    parser.add_argument("--report", default=None, metavar="OUTPUT",
                        help="only write the tables and figures of OUTPUT again from its "
                        "results.jsonl (with --metrics, --ours, --baselines if given); no training")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--datasets", default=None, help="comma-separated dataset names")
    parser.add_argument("--config_files", nargs="+", default=[], help="yaml files for every cell")
    parser.add_argument("--output", default="comparison", help="output folder (default comparison/)")
    parser.add_argument("--rerun", action="store_true", help="run finished cells again")
    parser.add_argument("--ours", default=None, help="the model of the improvement columns (MaTrRec)")
    parser.add_argument("--baselines", default=None, help="comma-separated (SASRec,Mamba4Rec)")
    parser.add_argument("--metrics", default=None, help="table metrics (recall@10,ndcg@10)")
    parser.add_argument("--tune", action="store_true",
                        help="search every model first, with the same budget, on the validation "
                        "split (its params file, properties/hyper/MODEL.hyper by default, or the "
                        "grid file's `tune:`); every seed then runs the chosen setting")
    parser.add_argument("--tool", default=None,
                        help="--tune's engine: hyperopt (default) or ray (default with --engine ray)")
    parser.add_argument("--algo", default=None,
                        help="--tune's algorithm: random (default), exhaustive or bayes")
    parser.add_argument("--max_evals", type=int, default=None,
                        help="--tune's trials per model and dataset (default 8)")
    parser.add_argument("--tune_epochs", type=int, default=None,
                        help="--tune: a trial trains at most this many epochs")


def _compare(args, overrides):
    from recbole_hybrid.compare import compare, load_grid, report_only
    from recbole_hybrid.compare.writers import output_paths
    from recbole_hybrid.config.values import at_least

    def names(text):
        return [n.strip() for n in text.split(",") if n.strip()] if text else None

    choices = dict(ours=args.ours, baselines=names(args.baselines), metrics=names(args.metrics))
    if args.report:
        given = [flag for flag, value in (("--grid", args.grid), ("--models", args.models),
                                          ("--datasets", args.datasets), ("--seeds", args.seeds),
                                          ("--rerun", args.rerun),
                                          ("--jobs", args.jobs is not None),
                                          ("--engine", args.engine != "local"),
                                          ("--ray_address", args.ray_address),
                                          ("--cpus_per_cell", args.cpus_per_cell is not None),
                                          ("--gpus_per_cell", args.gpus_per_cell is not None),
                                          ("--max_failures", args.max_failures is not None),
                                          ("--config_files", args.config_files),
                                          ("--tune", args.tune), ("--tool", args.tool),
                                          ("--algo", args.algo),
                                          ("--max_evals", args.max_evals is not None),
                                          ("--tune_epochs", args.tune_epochs is not None),
                                          ("--output", args.output != "comparison"))
                 if value] + list(overrides)
        if given:
            raise UserError(f"--report only draws the tables of an earlier grid again, in its "
                            f"own folder; {', '.join(given)} would need training or another "
                            "folder: drop them")
        paths = report_only(args.report, log=print_line, **choices)
        print("tables and figures: " + ", ".join(paths))
        return
    for flag, value in (("--max_evals", args.max_evals), ("--tune_epochs", args.tune_epochs)):
        if value is not None:
            at_least(flag, value)
    tune = dict(tool=args.tool, algo=args.algo, max_evals=args.max_evals,
                epochs=args.tune_epochs)  # any of them tunes the grid, as --tune does
    grid = load_grid(args.grid, names(args.models), names(args.datasets),
                     config_files(args), overrides, seeds=args.seeds,
                     tune=tune if args.tune or any(v is not None for v in tune.values()) else None,
                     tool="ray" if args.engine == "ray" else None, **choices)
    records = compare(grid, args.output, rerun=args.rerun, log=print_line, engine=args.engine,
                      jobs=args.jobs, ray_address=args.ray_address,
                      cpus_per_cell=args.cpus_per_cell, gpus_per_cell=args.gpus_per_cell,
                      max_failures=args.max_failures)
    print("tables and figures: " + ", ".join(output_paths(grid, args.output)))
    failed = [r for r in records.values() if r["status"] != "ok"]
    if failed:
        first = failed[0]
        raise UserError(
            f"{len(failed)} of {len(records)} cells failed ({first['model']} on "
            f"{first['dataset']}: {last_line(first['error'])}); table.md lists "
            "them. Fix the cause and run the same command again: finished cells are kept")


def _add_tune_parser(subparsers):
    parser = subparser(
        subparsers, "tune", "search hyperparameters with RecBole's HyperTuning (hyperopt) or Ray Tune",
        (
            "Search the space of --params_file (RecBole's format, e.g. properties/hyper/"
            "MaTrRec.hyper) with hyperopt (RecBole's HyperTuning, one trial after another) or "
            "Ray Tune (parallel trials, ASHA early stopping, local or --ray_address). Writes "
            "OUTPUT/trials.md, trials.csv and best.yaml. --key=value applies to every trial."
        ),
        _tune,
    )
    from recbole_hybrid.config import DEFAULT_DATASET, DEFAULT_MODEL
    from recbole_hybrid.tune.engines import ALGOS, ENGINES

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"default {DEFAULT_DATASET}")
    parser.add_argument("--config_files", nargs="+", default=[], help="yaml files for every trial")
    parser.add_argument("--params_file", required=True, help="the search space")
    parser.add_argument("--tool", default="hyperopt", choices=list(ENGINES))
    parser.add_argument("--algo", default="exhaustive", choices=ALGOS)
    parser.add_argument("--max_evals", type=int, default=10,
                        help="trials for random/bayes (exhaustive runs every point)")
    parser.add_argument("--output", default="tuning", help="output folder (default tuning/)")
    parser.add_argument("--ray_address", default=None,
                        help="join a running Ray cluster (e.g. 10.0.0.1:6379); default: a local Ray")
    parser.add_argument("--resume", action="store_true",
                        help="continue the search in --output (hyperopt: its finished trials "
                        "are kept; Ray: its experiment is restored)")
    parser.add_argument("--cpus_per_trial", type=float, default=1,
                        help="Ray: CPUs per trial (torch threads: its whole part; 0.5 shares one)")
    parser.add_argument("--gpus_per_trial", type=float, default=None,
                        help="Ray: GPUs per trial (default 1 where the cluster has GPUs; 0.5 shares one)")
    parser.add_argument("--max_failures", type=int, default=1, help="Ray: retries of a failing trial")


def _tune(args, overrides):
    from recbole_hybrid.tune import tune

    tune(args.model, args.dataset, args.params_file, args.tool, args.algo, args.max_evals,
         config_files(args), overrides, args.output,
         ray_address=args.ray_address, resume=args.resume, cpus_per_trial=args.cpus_per_trial,
         gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
         log=print_line)


def _add_convert_parser(subparsers):
    from recbole_hybrid.data.convert import FORMATS

    parser = subparser(
        subparsers, "convert", "convert raw interactions into RecBole atomic files",
        "Write DATA_PATH/NAME/NAME.inter (user_id, item_id, timestamp) from a raw file.",
        _convert,
    )
    parser.add_argument("--format", required=True, choices=sorted(FORMATS),
                        help="movielens (ratings.dat), amazon-csv (user,item,rating,timestamp), "
                        "amazon-json (5-core reviews, .gz too), sequences (user item_1 item_2 ...)")
    parser.add_argument("--source", required=True, help="the raw file")
    parser.add_argument("--name", required=True, help="dataset name, e.g. amazon-office-products")
    parser.add_argument("--data_path", default="dataset", help="RecBole's data folder (default dataset/)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset")


def _convert(args, overrides):
    from recbole_hybrid.data.convert import convert

    no_settings("convert", overrides)
    path, rows = convert(args.source, args.name, args.format, args.data_path, args.force)
    print(f"wrote {rows} interactions to {path}")


def parse_overrides(arguments):
    """`--key=value` arguments -> {key: value} (values stay strings; RecBole converts them)."""
    overrides = {}
    for argument in arguments:
        key, sep, value = argument[2:].partition("=")
        if not argument.startswith("--") or not sep or not key:
            raise UserError(
                f"unrecognised argument {argument!r}: config keys are given as --key=value, "
                "e.g. --epochs=5"
            )
        overrides[key] = value
    return overrides


def console(argv=None):
    """The `recbole-hybrid` program: `main`, after which a Ctrl-C or SIGTERM while Python
    exits (Ray's and the worker threads' atexit handlers) ends it at once, quietly, with 130."""
    try:
        code = main(argv)
    except KeyboardInterrupt:  # another Ctrl-C as main returned from the first
        code = EXIT_INTERRUPTED
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: os._exit(EXIT_INTERRUPTED))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv=None):
    """The command line; returns the exit code: 0 done, 2 bad input (one paragraph on
    stderr), 130 interrupted (what was kept and how to go on), 1 internal error (its
    traceback in a file named on stderr, and on the console with --debug). Ctrl-C and
    SIGTERM are handled from the start, the heavy imports (torch, RecBole, Ray) included."""
    with sigterm_as_interrupt():
        try:
            return _command(argv)
        except KeyboardInterrupt as interruption:
            message = str(interruption) if isinstance(interruption, Interrupted) else "interrupted"
            print(message, file=sys.stderr)
            return EXIT_INTERRUPTED


def _command(argv):
    parser = _Parser(prog="recbole-hybrid", allow_abbrev=False)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_compare_parser(subparsers)
    _add_tune_parser(subparsers)
    _add_convert_parser(subparsers)
    from recbole_hybrid.cli import recommend as cli_recommend

    cli_recommend.add_parsers(subparsers)
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    from recbole_hybrid.quick_start.run_folder import log_file

    earlier_log = log_file()  # an earlier run's log in this process is not this command's
    if args.command != "convert":
        _import_ray()
    try:
        args.handler(args, parse_overrides(extra))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            return _internal_error(error, args.debug, earlier_log)
        advice = ("free some space and run again" if error.errno in (errno.ENOSPC, errno.EDQUOT)
                  else "check its permissions, or pass another path")
        print(f"error: {error.filename or 'a file'}: {error.strerror}; {advice}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:
        return _internal_error(error, args.debug, earlier_log)
    return 0


def _import_ray():
    """Import torch, RecBole and Ray (RecBole's quick_start does, for every command but
    convert) with Ctrl-C and SIGTERM held until done (one landing inside torch's import
    aborts Python), and put our SIGTERM handler back first: Ray installs its own on import
    (one that exits 15, silently)."""
    with signals_held():
        from recbole_hybrid import compat  # noqa: F401  (silences Ray's import-time warnings)

        try:
            import ray  # noqa: F401
        except ImportError:
            pass
        handle_sigterm_as_sigint()


def _internal_error(error, debug, earlier_log):
    """An error no check foresaw: its traceback goes to the log of the run this command
    started (or a file of its own), one paragraph to the console."""
    from recbole_hybrid.quick_start.run_folder import log_file

    text = traceback.format_exc()
    path = log_file()
    if path == earlier_log:
        path = None
    try:
        if path is None:
            folder = os.path.join(os.getcwd(), "log")
            os.makedirs(folder, exist_ok=True)
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = os.path.join(folder, f"recbole-hybrid-error-{stamp}-{os.getpid()}.log")
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
            f.write(text)
            path = f.name
    if debug:
        print(text, file=sys.stderr)
    print(f"internal error: {type(error).__name__}: {error}. No check of recbole-hybrid "
          f"foresaw this; the traceback is in {path} (--debug prints it here). Please report "
          "it with that file.", file=sys.stderr)
    return EXIT_INTERNAL_ERROR
