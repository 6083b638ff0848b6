"""Running a grid: a tuned grid's searches first (`searches`), then its missing cells, each
in a fresh process (on this machine, or as a Ray task: `cell_engines`), then its tables and
figures.

Every finished cell is appended at once to `<output>/results.jsonl` (`results`), so an
interrupted grid resumes where it stopped: a cell whose latest record for the same settings
is "ok" is skipped unless `rerun`. A failing cell is recorded with its error and the grid
goes on. After each cell the tables and figures (`writers`) are written again from the file;
`report_only` writes them from the file alone, without training. One `compare` at a time may
work on an output folder.
"""

import dataclasses
import json
import os
import time

from recbole_hybrid.compare import cell_engines, results, searches, writers
from recbole_hybrid.compare.cell_processes import log_file_of
from recbole_hybrid.compare.grid import Grid, check_grid, check_names, check_spec
from recbole_hybrid.errors import Interrupted, UserError, last_line
from recbole_hybrid.utils.files import remove_stale_partials, writable_folder, write_text_atomically
from recbole_hybrid.utils.locks import exclusive
from recbole_hybrid.utils.processes import sigterm_as_interrupt

GRID_FILE = "grid.json"  # the grid of the last run in an output folder, for --report


def compare(grid, output="comparison", rerun=False, log=print, engine="local", **options):
    """Runs a tuned grid's missing searches (`searches`), then the grid's missing cells,
    each in a fresh process, with the engine `engine` (`cell_engines`) and its `options`
    (local: `jobs` at a time; ray: `ray_address`, `cpus_per_cell`, `gpus_per_cell`,
    `max_failures`); returns the latest records. Ctrl-C or SIGTERM stops the running search or cells and raises
    Interrupted; what finished stays."""
    cell_engine = cell_engines.engine(engine)
    options = cell_engines.engine_options(engine, options)
    check_grid(grid)
    if grid.tune:
        searches.check_searches(grid, output)
    os.makedirs(writable_folder(output), exist_ok=True)
    results.note_skipped(output, log)
    with _exclusive(output), sigterm_as_interrupt():
        _write_grid(grid, output)
        try:
            with cell_engine.connected(options):
                if grid.tune and engine == "ray" and grid.tune["tool"] != "ray":
                    log(f"note: the searches run {grid.tune['tool']} in this process; "
                        "tune tool ray (--tool ray) puts their trials on Ray too")
                if grid.tune:
                    searches.run_searches(grid, output, log, cell_engine.search_options(options))
                return _compare(grid, output, rerun, cell_engine, options, log)
        except KeyboardInterrupt:
            kept = [f"finished {what} are in {output}/{name}" for what, name, done in (
                ("searches", searches.SEARCHES_FILE, searches.read_searches(output)),
                ("cells", results.RESULTS_FILE, results.read_records(output))) if done]
            raise Interrupted(f"interrupted: {'; '.join(kept) or 'nothing had finished'}; run "
                              "the same command again to resume (a search keeps its finished "
                              "trials)") from None


def _compare(grid, output, rerun, cell_engine, options, log):
    cells = list(grid.cells())
    for path in remove_stale_partials(output):
        log(f"note: removed {path}, a file a killed process left half written")
    done = results.latest_of(output, grid)
    todo = [c for c in cells
            if rerun or done.get((c.model, c.dataset, c.seed), {}).get("status") != "ok"]
    if not rerun:
        for cell in results.adopt_runs(output, grid, todo, lambda c: log_file_of(output, c)):
            log(f"note: {cell.describe()} had finished without its record (the grid was "
                f"stopped as it ended): taken from its run folder, not trained again")
            todo.remove(cell)
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already done in "
        f"{os.path.join(output, results.RESULTS_FILE)}, {len(todo)} to run"
        + cell_engine.describe(options, len(todo)))
    started, finished = time.time(), []

    def on_done(cell, outcome, log_file):
        record = results.record_of(grid, cell, outcome, log_file)
        results.append(output, record)  # first: the tables after it may be interrupted
        finished.append(cell)
        elapsed = time.time() - started
        remaining = (len(todo) - len(finished)) * elapsed / len(finished)  # cells are alike
        result = (f"test {_short(record['test_result'], grid.metrics)}"
                  if record["status"] == "ok" else f"FAILED: {last_line(record['error'])}")
        log(f"[{len(finished)}/{len(todo)}] {cell.describe()}: {result} (elapsed "
            f"{_clock(elapsed)}, about {_clock(remaining)} remaining)")
        write_reports(grid, output)

    cell_engine.run_cells(todo, grid.config_files, output, options, on_done)
    if not todo:
        write_reports(grid, output)
    return results.latest_of(output, grid)


def write_reports(grid, output):
    """Every table and figure of `output`, from its results file; returns their paths."""
    return writers.write_all(grid, results.latest_of(output, grid), output)


def report_only(output, log=print, **choices):
    """Write the tables and figures of `output` again from its results.jsonl alone (no
    training); `choices` (metrics, ours, baselines) replace the grid's."""
    path = os.path.join(output, GRID_FILE)
    if not os.path.isdir(output):
        raise UserError(f"--report {output}: no such folder; pass the --output folder of an "
                        "earlier `recbole-hybrid compare`")
    if not os.path.isfile(path):
        raise UserError(f"{output} holds no comparison ({GRID_FILE} is missing): pass the "
                        "--output folder of an earlier `recbole-hybrid compare`")
    try:
        with open(path, encoding="utf-8") as f:
            spec = {**json.load(f), **{k: v for k, v in choices.items() if v}}
        check_spec(spec, GRID_FILE)
        grid = Grid(**spec)
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} is damaged or from another version ({error}); run the same "
                        "`recbole-hybrid compare` again (finished cells are kept), which "
                        "writes it anew") from None
    check_names(grid)
    if grid.tune:
        searches.set_tuned(grid, searches.latest_searches(output))
    with _exclusive(output):
        remove_stale_partials(output)
        results.note_skipped(output, log)
        measured = {m for r in results.read_records(output) for m in r.get("test_result") or {}}
        unknown = [m for m in grid.metrics if measured and m not in measured]
        if unknown:
            raise UserError(f"--metrics: {', '.join(unknown)} not measured in {output}; its "
                            f"results have {', '.join(sorted(measured))}")
        return write_reports(grid, output)


def _write_grid(grid, output):
    write_text_atomically(os.path.join(output, GRID_FILE),
                          json.dumps(dataclasses.asdict(grid), indent=2, default=str))


def _exclusive(output):
    """One grid process per output folder: two would run the same cells twice."""
    return exclusive(os.path.join(output, ".lock"), f"another `compare` is running on {output}; "
                     "wait for it, or pass another --output")


def _short(result, metrics):
    return ", ".join(f"{m} {result[m]:.4f}" for m in metrics if m in result) or "(no metrics)"


def _clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
