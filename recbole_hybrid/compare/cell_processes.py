"""Running a grid's cells on this machine, each in a fresh process, up to `jobs` at a time.

A fresh interpreter (spawn) per cell: RecBole's global state (seeds, logging, the config's
argv parsing) starts clean, and the cell's console output goes to its own log file. A cell
dies with the grid process (`utils.processes.start_worker`); an interruption of the grid stops
every running cell. The outcome comes back over a pipe: `{"status": "ok", **run's result}`,
or `{"status": "failed", "error": ...}` (the message of a UserError, else the traceback; a
process that died without a word gets its exit code and log file).
"""

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import sys
import traceback

from recbole_hybrid.config.values import at_least
from recbole_hybrid.errors import UserError
from recbole_hybrid.utils import processes

OPTIONS = {"jobs": 1}  # cells at a time


def check(options):
    at_least("--jobs", options["jobs"])


def connected(options):
    return contextlib.nullcontext()


def describe(options, todo):
    return f", {options['jobs']} at a time" if options["jobs"] > 1 and todo > 1 else ""


def search_options(options):
    return {}  # a tuned grid's searches run as `tune` runs them by default


def run_cells(cells, config_files, output, options, on_done):
    """Run `cells`, at most `jobs` at once; `on_done(cell, outcome, log_file)` is called in
    this process as each ends. Ctrl-C or SIGTERM stops every running cell and propagates."""
    jobs = options["jobs"]
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    pending, running = list(cells), {}  # receiver -> (cell, process, log file)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell = pending.pop(0)
                log_file = log_file_of(output, cell)
                os.makedirs(os.path.dirname(log_file), exist_ok=True)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(
                    os.getpid(), cell, config_files, os.path.join(output, "runs"), log_file,
                    threads, sender))
                process.start()
                sender.close()
                running[receiver] = (cell, process, log_file)
            for receiver in multiprocessing.connection.wait(list(running)):
                cell, process, log_file = running.pop(receiver)
                try:
                    outcome = receiver.recv()
                except EOFError:  # the process died without sending
                    outcome = None
                processes.stop(process)
                if outcome is None:
                    outcome = {"status": "failed",
                               "error": f"the cell's process ended with exit code "
                                        f"{process.exitcode} without a result (killed, or out "
                                        f"of memory?); see {log_file}"}
                on_done(cell, outcome, log_file)
    finally:  # an interruption (or an error in on_done): no cell outlives the grid
        for _, process, _ in running.values():
            processes.stop(process)


def log_file_of(output, cell):
    return os.path.join(output, "logs", f"{cell.name}.log")


def _worker(parent_pid, cell, config_files, runs_dir, log_file, threads, sender):
    processes.start_worker(parent_pid, threads)  # parallel cells on a CPU share its cores
    sender.send(run_cell(cell, config_files, runs_dir, log_file)[0])


def run_cell(cell, config_files, runs_dir, log_file, devices=None):
    """The body of a cell's fresh process, whichever engine started it: the run, its console
    output appended to `log_file`; (outcome, whether a failure was the user's). `devices`
    (use_gpu, gpu_id) go on top of the cell's settings."""
    with open(log_file, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        users = False
        try:
            from recbole_hybrid.quick_start.runner import run

            result = run(cell.model, cell.dataset, config_files,
                         {**cell.overrides, **(devices or {})}, output_dir=runs_dir, scope="any")
            outcome = {"status": "ok", **result}
        except Exception as error:  # recorded as the cell's result; the grid goes on
            traceback.print_exc()
            users = isinstance(error, UserError)
            message = str(error) if users else traceback.format_exc()
            outcome = {"status": "failed", "error": message.strip() or type(error).__name__}
        sys.stdout.flush()
        sys.stderr.flush()
    return outcome, users
