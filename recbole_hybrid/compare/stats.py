"""The statistics of a comparison over seeds (scipy): summaries, paired tests, Holm.

- `summary(values)`: mean, sample standard deviation, count and the 95% confidence interval
  of the mean (Student's t with n - 1 degrees of freedom) of one cell's seeds.
- `paired_tests(ours, baseline)`: per-user paired t-test and Wilcoxon signed-rank test of two
  models' per-user metric values (each averaged over the seeds), two-sided.
- `holm(p_values)`: Holm's step-down adjustment across the baselines of one table row.
- `stars(p)`: "**" below 0.01, "*" below 0.05.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (ddof 1); 0 for one seed
    n: int
    ci_low: float
    ci_high: float


def summary(values, confidence=0.95):
    """Summary of one cell's values over seeds (NaN-free floats)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return Summary(mean, 0.0, n, mean, mean)
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTests:
    mean_difference: float  # mean over users of ours - baseline
    t_p: float  # paired t-test, two-sided
    wilcoxon_p: float  # Wilcoxon signed-rank, two-sided, zero differences dropped


def paired_tests(ours, baseline):
    """Paired tests of two equally ordered per-user vectors. Identical vectors give p = 1."""
    ours, baseline = np.asarray(ours, np.float64), np.asarray(baseline, np.float64)
    if ours.shape != baseline.shape or ours.ndim != 1:
        raise ValueError(f"paired tests need two vectors of one length, got {ours.shape} and "
                         f"{baseline.shape}")
    differences = ours - baseline
    if not np.any(differences):
        return PairedTests(0.0, 1.0, 1.0)
    t_p = float(stats.ttest_rel(ours, baseline).pvalue)
    wilcoxon_p = float(stats.wilcoxon(ours, baseline, zero_method="wilcox").pvalue)
    return PairedTests(float(differences.mean()), t_p, wilcoxon_p)


def holm(p_values):
    """Holm-adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    m - i (i from 0), made monotone, and capped at 1."""
    p_values = list(p_values)
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def stars(p):
    """The significance mark of a p-value: "**" (p < 0.01), "*" (p < 0.05) or ""."""
    if p is None or math.isnan(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""
