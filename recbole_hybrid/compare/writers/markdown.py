"""table.md: the paper's layout (a row per dataset and metric, a column per model; best in
bold, second underlined; published values in parentheses; improvement of `ours` over each
baseline), then the efficiency table (parameters, training s/epoch, test inference s, peak
memory, epochs) and the cells without a result; a tuned grid's searches (`tuning`) come
before the efficiency table. With several seeds each value is
mean ± standard deviation over the seeds, an improvement carries the mark of its paired
tests (* p < 0.05, ** p < 0.01, Holm-adjusted across the row's baselines; the larger of the
t-test's and the Wilcoxon test's p decides), and two more tables follow: per cell the count,
mean, standard deviation and 95% confidence interval, and per row and baseline the paired
tests on the seed-averaged per-user values."""

import numpy as np

from recbole_hybrid.compare import stats
from recbole_hybrid.compare.rows import EFFICIENCY, multi_seed, ok_runs, percent, ranks
from recbole_hybrid.compare.writers import tuning
from recbole_hybrid.errors import last_line
from recbole_hybrid.utils.files import write_text_atomically


def write(path, grid, records, rows):
    write_text_atomically(path, text(grid, records, rows))


def text(grid, records, rows):
    """The file's text."""
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
        cells += [percent(p) + stats.stars(holm_p) for _, p, _, holm_p in row.improvements]
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
    if tuning.tuned(grid):
        lines += [""] + tuning.markdown_lines(grid)
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
        for baseline, gain, test, holm_p in row.improvements:
            if test is None:
                lines.append(f"| {row.dataset} | {row.metric} | {baseline} | {percent(gain)} "
                             "| - | - | - | - |")
                continue
            lines.append(f"| {row.dataset} | {row.metric} | {baseline} | {percent(gain)} | "
                         f"{test.mean_difference:+.4f} | {_p(test.t_p)} | {_p(test.wilcoxon_p)} | "
                         f"{_p(holm_p)}{stats.stars(holm_p)} |")
    return lines


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


def _p(value):
    return "-" if value is None else (f"{value:.2e}" if value < 1e-3 else f"{value:.3f}")
