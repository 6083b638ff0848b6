"""table.csv: one row per run (cell and seed) with every test and valid metric, the
efficiency figures and the published values; significance.csv (several seeds): the paired
tests of `ours` against each baseline, per dataset and metric."""

import csv

from recbole_hybrid.compare import stats
from recbole_hybrid.compare.published import published
from recbole_hybrid.compare.rows import EFFICIENCY
from recbole_hybrid.utils.files import replaced_atomically


def write_runs(path, grid, records, rows):
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


def write_significance(path, grid, records, rows):
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
