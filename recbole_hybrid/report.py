"""Tables and figures of a comparison grid, from its latest records.

Files written to the output folder:
- table.md: the paper's layout (a row per dataset and metric, a column per model; best in
  bold, second underlined; published values in parentheses; improvement of `ours` over each
  baseline), then the efficiency table (parameters, training s/epoch, test inference s, peak
  memory, epochs) and the failed cells;
- table.csv: one row per cell, every test/valid metric, efficiency and published values;
- table.tex: the metric table as a LaTeX tabular (\\textbf best, \\underline second);
- metrics.png: bars per dataset and metric, published values as black ticks;
- efficiency.png: training time per epoch and peak memory per model and dataset.
"""

import csv
import math
import os

import yaml

PUBLISHED_FILE = os.path.join(os.path.dirname(__file__), "properties", "published.yaml")
EFFICIENCY = [("parameters", "parameters", "{:,}"),
              ("train_seconds_per_epoch", "train s/epoch", "{:.2f}"),
              ("test_inference_seconds", "test inference s", "{:.3f}"),
              ("peak_memory_mb", "peak memory MiB", "{:.0f}"),
              ("epochs_run", "epochs", "{}")]


def published(dataset, model, metric):
    """The published test value, or None."""
    if not hasattr(published, "table"):
        with open(PUBLISHED_FILE, encoding="utf-8") as f:
            published.table = yaml.safe_load(f)["results"]
    return published.table.get(dataset, {}).get(model, {}).get(metric)


def write_all(grid, records, output):
    """Writes every file above; returns their paths."""
    paths = [os.path.join(output, name) for name in
             ("table.md", "table.csv", "table.tex", "metrics.png", "efficiency.png")]
    _write(paths[0], markdown(grid, records))
    write_csv(paths[1], grid, records)
    _write(paths[2], latex(grid, records))
    plot_metrics(paths[3], grid, records)
    plot_efficiency(paths[4], grid, records)
    return paths


def measured(records, model, dataset, metric):
    record = records.get((model, dataset))
    if not record or record.get("status") != "ok":
        return None
    return record["test_result"].get(metric)


def ranks(values):
    """{model: 1 or 2} for the best and second-best of {model: value or None}."""
    ordered = sorted({v for v in values.values() if v is not None}, reverse=True)
    return {m: ordered.index(v) + 1 for m, v in values.items() if v is not None and ordered.index(v) < 2}


def improvements(grid, values):
    """[(baseline, percent or None)] of `ours` over each baseline in the grid."""
    ours = values.get(grid.ours)
    out = []
    for baseline in grid.baselines:
        if baseline in grid.models and baseline != grid.ours:
            base = values.get(baseline)
            out.append((baseline, 100 * (ours - base) / base if ours is not None and base else None))
    return out


def metric_rows(grid, records):
    """(dataset, metric, {model: value}, {model: published}) per row of the metric table."""
    for dataset in grid.datasets:
        for metric in grid.metrics:
            values = {m: measured(records, m, dataset, metric) for m in grid.models}
            papers = {m: published(dataset, m, metric) for m in grid.models}
            yield dataset, metric, values, papers


def markdown(grid, records):
    show_ours = grid.ours in grid.models
    heads = [f"{grid.ours} vs {b}" for b, _ in improvements(grid, {})] if show_ours else []
    lines = ["| dataset | metric | " + " | ".join(grid.models + heads) + " |",
             "| --- | --- |" + " --- |" * (len(grid.models) + len(heads))]
    for dataset, metric, values, papers in metric_rows(grid, records):
        rank = ranks(values)
        cells = []
        for model in grid.models:
            text = _cell(values[model], papers[model])
            text = {1: f"**{text}**", 2: f"<u>{text}</u>"}.get(rank.get(model), text)
            cells.append(text)
        cells += [_percent(p) for _, p in improvements(grid, values)] if show_ours else []
        lines.append(f"| {dataset} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Measured test values; published ones in parentheses "
              "(MaTrRec paper, Table 2); best in bold, second underlined.", ""]
    lines += ["| dataset | model | " + " | ".join(h for _, h, _ in EFFICIENCY) + " | device |",
              "| --- | --- |" + " --- |" * (len(EFFICIENCY) + 1)]
    failed = []
    for dataset in grid.datasets:
        for model in grid.models:
            record = records.get((model, dataset))
            if record and record.get("status") == "ok":
                cells = [fmt.format(record[key]) if record.get(key) is not None else "-"
                         for key, _, fmt in EFFICIENCY]
                lines.append(f"| {dataset} | {model} | " + " | ".join(cells)
                             + f" | {record.get('device', '-')} |")
            elif record:
                failed.append(f"- {model} on {dataset}: {record['error'].strip().splitlines()[-1]}"
                              f" (log: {record.get('log_file')})")
    missing = [f"- {m} on {d}: not run yet" for d in grid.datasets for m in grid.models
               if (m, d) not in records]
    if failed or missing:
        lines += ["", "Cells without a result:", *failed, *missing]
    return "\n".join(lines) + "\n"


def latex(grid, records):
    columns = "ll" + "r" * len(grid.models)
    lines = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
             "Dataset & Metric & " + " & ".join(_tex(m) for m in grid.models) + " \\\\", "\\midrule"]
    for dataset, metric, values, _ in metric_rows(grid, records):
        rank = ranks(values)
        cells = []
        for model in grid.models:
            text = "--" if values[model] is None else f"{values[model]:.4f}"
            text = {1: f"\\textbf{{{text}}}", 2: f"\\underline{{{text}}}"}.get(rank.get(model), text)
            cells.append(text)
        lines.append(f"{_tex(dataset)} & {_tex(metric)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(path, grid, records):
    metrics = sorted({k for r in records.values() if r.get("status") == "ok"
                      for k in r["test_result"]})
    header = (["dataset", "model", "status"] + [f"test_{m}" for m in metrics]
              + [f"valid_{m}" for m in metrics] + [f"published_{m}" for m in metrics]
              + [key for key, _, _ in EFFICIENCY] + ["device", "seconds", "error", "results_file"])
    with open(path + ".partial", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for dataset in grid.datasets:
            for model in grid.models:
                record = records.get((model, dataset))
                if not record:
                    continue
                ok = record.get("status") == "ok"
                row = [dataset, model, record.get("status")]
                row += [record["test_result"].get(m) if ok else None for m in metrics]
                row += [record["best_valid_result"].get(m) if ok else None for m in metrics]
                row += [published(dataset, model, m) for m in metrics]
                row += [record.get(key) for key, _, _ in EFFICIENCY]
                row += [record.get("device"), record.get("seconds"), record.get("error"),
                        record.get("results_file")]
                writer.writerow(row)
    os.replace(path + ".partial", path)


def plot_metrics(path, grid, records):
    plt = _pyplot()
    rows, cols = len(grid.datasets), len(grid.metrics)
    figure, axes = plt.subplots(rows, cols, figsize=(max(4, 0.6 * len(grid.models)) * cols,
                                                     3.2 * rows), squeeze=False)
    for (dataset, metric, values, papers), axis in zip(metric_rows(grid, records), axes.flat):
        x = range(len(grid.models))
        heights = [values[m] if values[m] is not None else 0 for m in grid.models]
        colors = ["tab:red" if m == grid.ours else "tab:blue" for m in grid.models]
        axis.bar(x, heights, color=colors)
        for i, model in enumerate(grid.models):
            if papers[model] is not None:
                axis.plot([i - 0.4, i + 0.4], [papers[model]] * 2, color="black", linewidth=2)
            if values[model] is None:
                axis.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        axis.set_xticks(list(x), grid.models, rotation=45, ha="right", fontsize=8)
        axis.set_title(f"{dataset}: test {metric}", fontsize=9)
    figure.suptitle("measured (bars) and published (black ticks)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_efficiency(path, grid, records):
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 1.0 * len(grid.models) * 2), 3.6))
    width = 0.8 / max(1, len(grid.datasets))
    for axis, (key, label) in zip(axes, [("train_seconds_per_epoch", "training s/epoch"),
                                         ("peak_memory_mb", "peak memory MiB")]):
        for j, dataset in enumerate(grid.datasets):
            heights = []
            for model in grid.models:
                record = records.get((model, dataset)) or {}
                value = record.get(key) if record.get("status") == "ok" else None
                heights.append(value if value is not None and not math.isnan(value) else 0)
            axis.bar([i + j * width for i in range(len(grid.models))], heights, width, label=dataset)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(grid.models))], grid.models,
                        rotation=45, ha="right", fontsize=8)
        axis.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _pyplot():
    """matplotlib's pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cell(value, paper):
    text = "-" if value is None else f"{value:.4f}"
    return text + (f" ({paper:.4f})" if paper is not None else "")


def _percent(value):
    return "-" if value is None else f"{value:+.1f}%"


def _tex(text):
    return str(text).replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def _write(path, text):
    with open(path + ".partial", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".partial", path)
