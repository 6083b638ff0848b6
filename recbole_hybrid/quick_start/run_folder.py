"""What a run leaves behind: its run folder, `results.json` and the printed table.

A run folder is created atomically when the run starts (two runs started in the same
second get two folders), removed again if the run fails before writing anything into it,
and never overwritten: a resumed run's results go to `results-2.json` (and its per-user
metrics to `per_user_test-2.npz`), and only one process at a time may resume a run.
"""

import contextlib
import datetime
import json
import logging
import os

from texttable import Texttable

from recbole_hybrid.errors import OutputError
from recbole_hybrid.utils.files import describe_os_error, next_free, writable_folder
from recbole_hybrid.utils.locks import exclusive

RESULTS_FILE = "results.json"


@contextlib.contextmanager
def new_run_dir(output_dir, model, dataset):
    """Create a run folder `<output_dir>/<model>-<dataset>-<time>[-n]` nobody else has and
    yield its path; if the block fails before writing into it, remove it again (and
    `output_dir` too, when this call created it and it is empty)."""
    output_dir = writable_folder(output_dir)
    created = [] if os.path.isdir(output_dir) else [output_dir]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(output_dir, f"{model}-{dataset}-{stamp}")
    try:
        os.makedirs(output_dir, exist_ok=True)
        path, n = base, 1
        while True:
            try:
                os.mkdir(path)  # atomic: exactly one process creates a given name
                break
            except FileExistsError:
                n += 1
                path = f"{base}-{n}"
    except OSError as error:
        raise OutputError(describe_os_error(error, output_dir)) from None
    try:
        yield path
    except BaseException:
        for folder in [path, *created]:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only succeeds when empty
        raise


@contextlib.contextmanager
def resumed_run_dir(checkpoint):
    """The run folder of `checkpoint`, held for this process: two resumes of one run would
    train into the same checkpoint file."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    try:
        writable_folder(folder, "run folder")
    except OutputError:
        raise OutputError(f"the run folder {folder} of {checkpoint} is not writable, and a resume "
                          "writes its checkpoint and results there: make it writable, or copy the "
                          "run folder and resume from the copy") from None
    with exclusive(folder, f"another process is resuming the run in {folder}; wait for it to end"):
        yield folder


def write_results(run_dir, result):
    """Write results.json into the run folder, whole or not at all, never over an earlier
    results file (a complete temporary file is linked to the first free name)."""
    partial = os.path.join(run_dir, f".{RESULTS_FILE}.{os.getpid()}.partial")
    path = None
    try:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
            f.flush()
            os.fsync(f.fileno())
        while True:
            path = next_free(run_dir, RESULTS_FILE)
            try:
                os.link(partial, path)  # fails where a file appeared meanwhile: take the next
                return path
            except FileExistsError:
                continue
    except OSError as error:
        raise OutputError(describe_os_error(error, path or run_dir) + f"; the run's checkpoint is kept in "
                          f"{run_dir}, and its test result was "
                          f"{json.dumps(result.get('test_result'), default=float)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def format_results(result):
    """The best valid and the test metrics side by side, as a text table."""
    table = Texttable()
    table.set_deco(Texttable.HEADER)
    table.set_cols_dtype(["t", "f", "f"])
    table.set_precision(4)
    table.add_row(["metric", "best valid", "test"])
    for metric, value in result["test_result"].items():
        table.add_row([metric, result["best_valid_result"].get(metric, float("nan")), value])
    return (
        f"{result['model']} on {result['dataset']} "
        f"(model selected on valid {result['valid_metric']})\n{table.draw()}"
    )


def log_file():
    """The log file of the current RecBole run, or None."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return os.path.abspath(handler.baseFilename)
    return None
