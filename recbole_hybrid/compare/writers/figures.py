"""metrics.png: bars per dataset and metric (error bars: standard deviation over seeds),
published values as black ticks; efficiency.png: training time per epoch and peak memory
per model and dataset."""

import math

import numpy as np

from recbole_hybrid.compare.rows import multi_seed, ok_runs
from recbole_hybrid.utils.files import replaced_atomically


def plot_metrics(path, grid, records, rows):
    plt = _pyplot()
    n_rows, n_cols = len(grid.datasets), len(grid.metrics)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(max(4, 0.6 * len(grid.models)) * n_cols,
                                                         3.2 * n_rows), squeeze=False)
    for row, axis in zip(rows, axes.flat):
        x = range(len(grid.models))
        summaries = [row.summaries[m] for m in grid.models]
        heights = [s.mean if s else 0 for s in summaries]
        errors = [s.std if s else 0 for s in summaries] if multi_seed(grid) else None
        colors = ["tab:red" if m == grid.ours else "tab:blue" for m in grid.models]
        axis.bar(x, heights, color=colors, yerr=errors, capsize=3 if errors else 0)
        for i, model in enumerate(grid.models):
            if row.papers[model] is not None:
                axis.plot([i - 0.4, i + 0.4], [row.papers[model]] * 2, color="black", linewidth=2)
            if row.summaries[model] is None:
                axis.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        axis.set_xticks(list(x), grid.models, rotation=45, ha="right", fontsize=8)
        axis.set_title(f"{row.dataset}: test {row.metric}", fontsize=9)
    title = "measured (bars) and published (black ticks)"
    if multi_seed(grid):
        title += f"; mean and std over {len(grid.seeds)} seeds"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_efficiency(path, grid, records, rows):
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 1.0 * len(grid.models) * 2), 3.6))
    width = 0.8 / max(1, len(grid.datasets))
    for axis, (key, label) in zip(axes, [("train_seconds_per_epoch", "training s/epoch"),
                                         ("peak_memory_mb", "peak memory MiB")]):
        for j, dataset in enumerate(grid.datasets):
            heights = []
            for model in grid.models:
                values = [r[key] for r in ok_runs(grid, records, model, dataset)
                          if r.get(key) is not None and not math.isnan(r[key])]
                heights.append(float(np.mean(values)) if values else 0)
            axis.bar([i + j * width for i in range(len(grid.models))], heights, width, label=dataset)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(grid.models))], grid.models,
                        rotation=45, ha="right", fontsize=8)
        axis.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def _pyplot():
    """matplotlib's pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path):
    with replaced_atomically(path) as partial:
        figure.savefig(partial, dpi=120, format="png")
