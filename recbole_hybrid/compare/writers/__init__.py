"""The files a comparison writes into its output folder, each format one module and one
entry of WRITERS: (file name, writer(path, grid, records, rows), whether the grid gets it).
A writer receives the grid, its latest records {(model, dataset, seed): record} and the
metric rows (`compare.rows.metric_rows`); it writes its file atomically."""

import os

from recbole_hybrid.compare.rows import metric_rows, multi_seed
from recbole_hybrid.compare.writers import csv_files, figures, latex, markdown, tuning


def _always(grid):
    return True


WRITERS = [
    ("table.md", markdown.write, _always),
    ("table.csv", csv_files.write_runs, _always),
    ("table.tex", latex.write, _always),
    ("metrics.png", figures.plot_metrics, _always),
    ("efficiency.png", figures.plot_efficiency, _always),
    ("significance.csv", csv_files.write_significance, multi_seed),
    ("tuning.csv", tuning.write_csv, tuning.tuned),
]


def output_paths(grid, output):
    """The paths of the files a comparison of `grid` writes into `output`."""
    return [os.path.join(output, name) for name, _, wanted in WRITERS if wanted(grid)]


def write_all(grid, records, output):
    """Writes every file of WRITERS the grid gets; returns their paths."""
    rows = list(metric_rows(grid, records))
    for name, write, wanted in WRITERS:
        if wanted(grid):
            write(os.path.join(output, name), grid, records, rows)
    return output_paths(grid, output)
