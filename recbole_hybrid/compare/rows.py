"""What a comparison's tables show, computed once from its latest records: a Row per
dataset and metric with every model's summary over its seeds, the published values, and
the improvement of `ours` over each baseline with its paired tests (`stats`).
"""

import functools
import os
from dataclasses import dataclass

import numpy as np

from recbole_hybrid.compare import stats
from recbole_hybrid.compare.published import published
from recbole_hybrid.quick_start import per_user

# the efficiency columns: record key, heading, format
EFFICIENCY = [("parameters", "parameters", "{:,}"),
              ("train_seconds_per_epoch", "train s/epoch", "{:.2f}"),
              ("test_inference_seconds", "test inference s", "{:.3f}"),
              ("peak_memory_mb", "peak memory MiB", "{:.0f}"),
              ("epochs_run", "epochs", "{}")]


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


def percent(value):
    """An improvement as text: +3.1%, or - where there is none."""
    return "-" if value is None else f"{value:+.1f}%"
