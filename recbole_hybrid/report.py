"""Tables and figures of a comparison grid, from its latest records.

Files written to the output folder:
- table.md: the paper's layout (a row per dataset and metric, a column per model; best in
  bold, second underlined; published values in parentheses; improvement of `ours` over each
  baseline), then the efficiency table (parameters, training s/epoch, test inference s, peak
  memory, epochs) and the cells without a result. With several seeds each value is
  mean ± standard deviation over the seeds, an improvement carries the mark of its paired
  tests (* p < 0.05, ** p < 0.01, Holm-adjusted across the row's baselines; the larger of
  the t-test's and the Wilcoxon test's p decides), and two more tables follow: per cell the
  count, mean, standard deviation and 95% confidence interval, and per row and baseline the
  paired tests on the seed-averaged per-user values;
- table.csv: one row per run (cell and seed): every test/valid metric, efficiency and
  published values; significance.csv with several seeds: the paired tests;
- table.tex: the metric table as a LaTeX tabular (\\textbf best, \\underline second, marks
  as superscripts);
- metrics.png: bars per dataset and metric (error bars: standard deviation over seeds),
  published values as black ticks;
- efficiency.png: training time per epoch and peak memory per model and dataset.
"""

import csv
import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import yaml

from recbole_hybrid import per_user, stats
from recbole_hybrid.errors import last_line
from recbole_hybrid.outputs import replaced_atomically, write_text_atomically

PUBLISHED_FILE = os.path.join(os.path.dirname(__file__), "properties", "published.yaml")
EFFICIENCY = [("parameters", "parameters", "{:,}"),
              ("train_seconds_per_epoch", "train s/epoch", "{:.2f}"),
              ("test_inference_seconds", "test inference s", "{:.3f}"),
              ("peak_memory_mb", "peak memory MiB", "{:.0f}"),
              ("epochs_run", "epochs", "{}")]


@functools.cache
def _published_table():
    with open(PUBLISHED_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)["results"]


def published(dataset, model, metric):
    """The published test value, or None."""
    return _published_table().get(dataset, {}).get(model, {}).get(metric)


def write_all(grid, records, output):
    """Writes every file above from {(model, dataset, seed): record}; returns their paths."""
    names = ["table.md", "table.csv", "table.tex", "metrics.png", "efficiency.png"]
    rows = list(metric_rows(grid, records))
    write_text_atomically(os.path.join(output, names[0]), markdown(grid, records, rows))
    write_csv(os.path.join(output, names[1]), grid, records)
    write_text_atomically(os.path.join(output, names[2]), latex(grid, rows))
    plot_metrics(os.path.join(output, names[3]), grid, rows)
    plot_efficiency(os.path.join(output, names[4]), grid, records)
    if multi_seed(grid):
        names.append("significance.csv")
        write_significance_csv(os.path.join(output, names[-1]), grid, rows)
    return [os.path.join(output, name) for name in names]


def multi_seed(grid):
    return bool(grid.seeds) and len(grid.seeds) > 1


def ok_runs(grid, records, model, dataset):
    """The finished records of one cell, in the grid's seed order."""
    runs = [records.get((model, dataset, seed)) for seed in grid.seeds or [None]]
    return [r for r in runs if r and r.get("status") == "ok"]


@dataclass
class Row:
    """One row of the metric table: a dataset and metric, every model's summary over its
    seeds (None without a finished run), the published values, and for each baseline the
    improvement of `ours` and its tests (None where they cannot be computed)."""
    dataset: str
    metric: str
    summaries: dict  # model -> stats.Summary or None
    papers: dict  # model -> published value or None
    improvements: list  # [(baseline, percent or None, stats.PairedTests or None, Holm p or None)]

    def means(self):
        return {m: s.mean if s else None for m, s in self.summaries.items()}


def metric_rows(grid, records):
    """A Row per dataset and metric of the grid."""
    for dataset in grid.datasets:
        for metric in grid.metrics:
            summaries = {}
            for model in grid.models:
                values = [r["test_result"][metric] for r in ok_runs(grid, records, model, dataset)
                          if metric in r["test_result"]]
                summaries[model] = stats.summary(values) if values else None
            papers = {m: published(dataset, m, metric) for m in grid.models}
            row = Row(dataset, metric, summaries, papers, [])
            row.improvements = _improvements(grid, records, row)
            yield row


def _improvements(grid, records, row):
    if grid.ours not in grid.models:
        return []
    means = row.means()
    baselines = [b for b in grid.baselines if b in grid.models and b != grid.ours]
    tests = [_paired(grid, records, row.dataset, row.metric, b) if multi_seed(grid) else None
             for b in baselines]
    pairs = [(i, max(t.t_p, t.wilcoxon_p)) for i, t in enumerate(tests) if t is not None]
    adjusted = dict(zip([i for i, _ in pairs], stats.holm([p for _, p in pairs])))
    out = []
    for i, baseline in enumerate(baselines):
        ours, base = means[grid.ours], means[baseline]
        percent = 100 * (ours - base) / base if ours is not None and base else None
        out.append((baseline, percent, tests[i], adjusted.get(i)))
    return out


def _paired(grid, records, dataset, metric, baseline):
    """Paired tests of `ours` against `baseline` on the users' values averaged over seeds."""
    ours = _seed_averaged(grid, records, grid.ours, dataset, metric)
    base = _seed_averaged(grid, records, baseline, dataset, metric)
    if ours is None or base is None:
        return None
    users = sorted(set(ours) & set(base))
    if len(users) < 2 or len(users) != len(ours) or len(users) != len(base):
        return None  # not the same test users: no pairing
    return stats.paired_tests([ours[u] for u in users], [base[u] for u in users])


def _seed_averaged(grid, records, model, dataset, metric):
    """{user: the metric averaged over the cell's seeds}, or None without per-user files."""
    vectors = []
    for record in ok_runs(grid, records, model, dataset):
        path = record.get("per_user_file")
        if not path or not os.path.isfile(path):
            return None
        users, values = _load_per_user(path)
        if metric not in values:
            return None
        vectors.append(dict(zip(users.tolist(), values[metric].tolist())))
    if not vectors or any(v.keys() != vectors[0].keys() for v in vectors):
        return None
    return {u: float(np.mean([v[u] for v in vectors])) for u in vectors[0]}


@functools.lru_cache(maxsize=256)
def _load_per_user(path):
    return per_user.load(path)


def ranks(values):
    """{model: 1 or 2} for the best and second-best of {model: value or None}; nothing when
    fewer than two models have a value (a lone value is no "best")."""
    present = [v for v in values.values() if v is not None]
    if len(present) < 2:
        return {}
    ordered = sorted(set(present), reverse=True)
    return {m: ordered.index(v) + 1 for m, v in values.items() if v is not None and ordered.index(v) < 2}


def markdown(grid, records, rows=None):
    rows = list(metric_rows(grid, records)) if rows is None else rows
    several = multi_seed(grid)
    heads = [f"{grid.ours} vs {b}" for b, *_ in rows[0].improvements] if rows else []
    lines = ["| dataset | metric | " + " | ".join(grid.models + heads) + " |",
             "| --- | --- |" + " --- |" * (len(grid.models) + len(heads))]
    for row in rows:
        rank = ranks(row.means())
        cells = []
        for model in grid.models:
            text = _cell(row.summaries[model], row.papers[model], several)
            text = {1: f"**{text}**", 2: f"<u>{text}</u>"}.get(rank.get(model), text)
            cells.append(text)
        cells += [_percent(p) + stats.stars(holm_p) for _, p, _, holm_p in row.improvements]
        lines.append(f"| {row.dataset} | {row.metric} | " + " | ".join(cells) + " |")
    if several:
        lines += ["", f"Measured test values, mean ± standard deviation over {len(grid.seeds)} "
                  f"seeds ({', '.join(map(str, grid.seeds))}); published ones in parentheses "
                  "(MaTrRec paper, Table 2); best mean in bold, second underlined. Marks: "
                  "paired tests of the per-user values averaged over seeds, * p < 0.05, "
                  "** p < 0.01 (the larger of the t-test's and Wilcoxon's p, Holm-adjusted "
                  "across the row's baselines).", ""]
        lines += _summary_table(grid, rows) + [""] + _tests_table(rows)
    else:
        lines += ["", "Measured test values; published ones in parentheses "
                  "(MaTrRec paper, Table 2); best in bold, second underlined."]
    lines += ["", "| dataset | model | " + " | ".join(h for _, h, _ in EFFICIENCY) + " | device |",
              "| --- | --- |" + " --- |" * (len(EFFICIENCY) + 1)]
    failed, missing = [], []
    for dataset in grid.datasets:
        for model in grid.models:
            runs = ok_runs(grid, records, model, dataset)
            if runs:
                cells = [_efficiency(runs, key, fmt) for key, _, fmt in EFFICIENCY]
                lines.append(f"| {dataset} | {model} | " + " | ".join(cells)
                             + f" | {runs[0].get('device', '-')} |")
            for seed in grid.seeds or [None]:
                record = records.get((model, dataset, seed))
                name = f"{model} on {dataset}" + ("" if seed is None else f", seed {seed}")
                if record is None:
                    missing.append(f"- {name}: not run yet")
                elif record.get("status") != "ok":
                    failed.append(f"- {name}: {last_line(record['error'])} "
                                  f"(log: {record.get('log_file')})")
    if failed or missing:
        lines += ["", "Cells without a result:", *failed, *missing]
    return "\n".join(lines) + "\n"


def _summary_table(grid, rows):
    lines = ["| dataset | metric | model | n | mean | std | 95% CI |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for model in grid.models:
            s = row.summaries[model]
            if s:
                lines.append(f"| {row.dataset} | {row.metric} | {model} | {s.n} | {s.mean:.4f} | "
                             f"{s.std:.4f} | [{s.ci_low:.4f}, {s.ci_high:.4f}] |")
    return lines


def _tests_table(rows):
    lines = ["| dataset | metric | baseline | improvement | mean per-user difference | "
             "t-test p | Wilcoxon p | Holm-adjusted p |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for baseline, percent, test, holm_p in row.improvements:
            if test is None:
                lines.append(f"| {row.dataset} | {row.metric} | {baseline} | {_percent(percent)} "
                             "| - | - | - | - |")
                continue
            lines.append(f"| {row.dataset} | {row.metric} | {baseline} | {_percent(percent)} | "
                         f"{test.mean_difference:+.4f} | {_p(test.t_p)} | {_p(test.wilcoxon_p)} | "
                         f"{_p(holm_p)}{stats.stars(holm_p)} |")
    return lines


def latex(grid, rows):
    several = multi_seed(grid)
    heads = [f"vs {b}" for b, *_ in rows[0].improvements] if rows else []
    columns = "ll" + "r" * (len(grid.models) + len(heads))
    lines = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
             "Dataset & Metric & " + " & ".join(_tex(m) for m in grid.models + heads) + " \\\\",
             "\\midrule"]
    for row in rows:
        rank = ranks(row.means())
        cells = []
        for model in grid.models:
            s = row.summaries[model]
            text = "--" if s is None else (f"{s.mean:.4f} $\\pm$ {s.std:.4f}" if several
                                           else f"{s.mean:.4f}")
            text = {1: f"\\textbf{{{text}}}", 2: f"\\underline{{{text}}}"}.get(rank.get(model), text)
            cells.append(text)
        for _, percent, _, holm_p in row.improvements:
            mark = stats.stars(holm_p)
            cells.append(_tex(_percent(percent)) + (f"$^{{{mark}}}$" if mark else ""))
        lines.append(f"{_tex(row.dataset)} & {_tex(row.metric)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(path, grid, records):
    ok = [r for r in records.values() if r.get("status") == "ok"]
    metrics = sorted({k for r in ok for k in r["test_result"]})
    seeds = grid.seeds or [None]
    header = (["dataset", "model"] + (["seed"] if grid.seeds else []) + ["status"]
              + [f"test_{m}" for m in metrics] + [f"valid_{m}" for m in metrics]
              + [f"published_{m}" for m in metrics] + [key for key, _, _ in EFFICIENCY]
              + ["device", "seconds", "error", "results_file"])
    with replaced_atomically(path) as partial, open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for dataset in grid.datasets:
            for model in grid.models:
                for seed in seeds:
                    record = records.get((model, dataset, seed))
                    if not record:
                        continue
                    done = record.get("status") == "ok"
                    row = [dataset, model] + ([seed] if grid.seeds else []) + [record.get("status")]
                    row += [record["test_result"].get(m) if done else None for m in metrics]
                    row += [record["best_valid_result"].get(m) if done else None for m in metrics]
                    row += [published(dataset, model, m) for m in metrics]
                    row += [record.get(key) for key, _, _ in EFFICIENCY]
                    row += [record.get("device"), record.get("seconds"), record.get("error"),
                            record.get("results_file")]
                    writer.writerow(row)


def write_significance_csv(path, grid, rows):
    header = ["dataset", "metric", "ours", "baseline", "ours_mean", "baseline_mean",
              "improvement_percent", "mean_user_difference", "t_p", "wilcoxon_p", "holm_p", "mark"]
    with replaced_atomically(path) as partial, open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            means = row.means()
            for baseline, percent, test, holm_p in row.improvements:
                writer.writerow([row.dataset, row.metric, grid.ours, baseline, means[grid.ours],
                                 means[baseline], percent,
                                 test.mean_difference if test else None,
                                 test.t_p if test else None, test.wilcoxon_p if test else None,
                                 holm_p, stats.stars(holm_p)])


def plot_metrics(path, grid, rows):
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


def plot_efficiency(path, grid, records):
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


def _cell(summary, paper, several):
    if summary is None:
        text = "-"
    elif several:
        text = f"{summary.mean:.4f} ± {summary.std:.4f}"
    else:
        text = f"{summary.mean:.4f}"
    return text + (f" ({paper:.4f})" if paper is not None else "")


def _efficiency(runs, key, fmt):
    """The mean over seeds of an efficiency figure, formatted; "-" where none was measured."""
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return "-"
    mean = float(np.mean(values))
    return fmt.format(int(round(mean)) if fmt in ("{:,}", "{}") else mean)


def _percent(value):
    return "-" if value is None else f"{value:+.1f}%"


def _p(value):
    return "-" if value is None else (f"{value:.2e}" if value < 1e-3 else f"{value:.3f}")


def _tex(text):
    return str(text).replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def _save(figure, path):
    with replaced_atomically(path) as partial:
        figure.savefig(partial, dpi=120, format="png")
