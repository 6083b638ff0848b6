"""Comparisons over seeds: summaries, paired tests with Holm's correction, per-user files,
resumed seeds and tables redrawn from results.jsonl alone."""

import json
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import TINY_SASREC
from recbole_hybrid.compare import rows, stats
from recbole_hybrid.compare.writers import latex, markdown
from recbole_hybrid.quick_start import per_user
from recbole_hybrid.cli import main
from recbole_hybrid.compare import RESULTS_FILE, Grid, compare, read_records

TINY = {**TINY_SASREC, "epochs": 1, "metrics": ["Recall", "NDCG"], "topk": [5, 10],
        "d_state": 8}


def test_summary_is_the_mean_std_and_t_interval():
    values = [0.081, 0.079, 0.085, 0.080]
    s = stats.summary(values)
    low, high = scipy_stats.t.interval(0.95, 3, loc=np.mean(values),
                                       scale=scipy_stats.sem(values))
    assert s.n == 4 and s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))
    assert stats.summary([0.5]) == stats.Summary(0.5, 0.0, 1, 0.5, 0.5)


def test_paired_tests_give_scipys_p_values_and_identical_models_no_mark():
    rng = np.random.default_rng(0)
    baseline = rng.binomial(1, 0.08, size=4000).astype(float)
    ours = np.where(rng.random(4000) < 0.03, 1.0, baseline)  # ours also hits 3% more users
    test = stats.paired_tests(ours, baseline)
    assert test.t_p == pytest.approx(scipy_stats.ttest_rel(ours, baseline).pvalue)
    assert test.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(ours, baseline).pvalue)
    assert test.mean_difference == pytest.approx((ours - baseline).mean())
    assert test.t_p < 0.01 and stats.stars(max(test.t_p, test.wilcoxon_p)) == "**"
    same = stats.paired_tests(baseline, baseline)
    assert (same.t_p, same.wilcoxon_p) == (1.0, 1.0) and stats.stars(same.t_p) == ""
    noise = stats.paired_tests(rng.permutation(baseline), baseline)
    assert noise.t_p > 0.05 and stats.stars(noise.t_p) == ""


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert stats.stars(0.049) == "*" and stats.stars(0.0099) == "**" and stats.stars(0.05) == ""


def fake_runs(tmp_path, per_model):
    """Records of three seeds per model with per-user files: {model: (users x seeds) array}."""
    grid = Grid(models=list(per_model), datasets=["d"], metrics=["recall@10"], ours="MaTrRec",
                baselines=["SASRec", "GRU4Rec"], seeds=[1, 2, 3])
    records = {}
    users = np.array([f"u{i}" for i in range(len(next(iter(per_model.values()))))])
    for model, values in per_model.items():
        for j, seed in enumerate(grid.seeds):
            folder = tmp_path / f"{model}-{seed}"
            os.makedirs(folder)
            path = str(folder / per_user.FILE)
            np.savez_compressed(path, users=users[::-1] if j % 2 else users,  # order must not matter
                                **{"recall@10": values[::-1, j] if j % 2 else values[:, j]})
            records[(model, "d", seed)] = {"status": "ok", "per_user_file": path,
                                           "test_result": {"recall@10": float(values[:, j].mean())}}
    return grid, records


def test_tables_mark_what_the_holm_adjusted_tests_support(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.binomial(1, 0.1, size=(3000, 3)).astype(float)
    better = np.maximum(base, rng.binomial(1, 0.05, size=(3000, 3)))
    grid, records = fake_runs(tmp_path, {"GRU4Rec": base.copy(), "SASRec": base,
                                         "MaTrRec": better})
    (row,) = rows.metric_rows(grid, records)
    assert row.summaries["MaTrRec"].n == 3
    assert row.summaries["MaTrRec"].mean == pytest.approx(better.mean(axis=0).mean())
    assert row.summaries["MaTrRec"].std == pytest.approx(better.mean(axis=0).std(ddof=1))
    (_, _, vs_sasrec, holm_sasrec), (_, _, vs_gru, holm_gru) = row.improvements
    expected = scipy_stats.ttest_rel(better.mean(axis=1), base.mean(axis=1)).pvalue
    assert vs_sasrec.t_p == pytest.approx(expected)
    raw = [max(vs_sasrec.t_p, vs_sasrec.wilcoxon_p), max(vs_gru.t_p, vs_gru.wilcoxon_p)]
    assert [holm_sasrec, holm_gru] == pytest.approx(stats.holm(raw))
    table = markdown.text(grid, records, list(rows.metric_rows(grid, records)))
    assert "MaTrRec vs SASRec" in table and "%**" in table and " ± " in table
    assert "95% CI" in table and "Holm-adjusted p" in table
    tex = latex.text(grid, records, [row])
    assert "$\\pm$" in tex and "$^{**}$" in tex

    same, same_records = fake_runs(tmp_path / "same", {"SASRec": base, "MaTrRec": base.copy(),
                                                       "GRU4Rec": base.copy()})
    (row,) = rows.metric_rows(same, same_records)
    assert all(holm_p == 1.0 for *_, holm_p in row.improvements)
    improvement_cells = markdown.text(same, same_records, list(rows.metric_rows(same, same_records))).split("\n")[2].split("|")[-3:-1]
    assert [c.strip() for c in improvement_cells] == ["+0.0%", "+0.0%"]  # no mark


@pytest.mark.slow
def test_a_seeded_grid_resumes_missing_seeds_and_its_report_is_redrawn_byte_for_byte(
        data_path, workdir):
    output = str(workdir / "cmp")
    settings = {**TINY, "data_path": data_path}

    def grid(seeds):
        return Grid(models=["SASRec", "MaTrRec"], datasets=["tiny"], settings=settings,
                    baselines=["SASRec"], metrics=["recall@10", "ndcg@10"], seeds=seeds)

    compare(grid([7, 8]), output, log=lambda _: None)
    assert len(read_records(output)) == 4
    log = []
    records = compare(grid([7, 8, 9]), output, jobs=2, log=log.append)
    assert "6 cells, 4 already done" in log[0] and "2 to run, 2 at a time" in log[0]
    assert len(read_records(output)) == 6 and len(records) == 6  # only seed 9 ran
    for (model, dataset, seed), record in records.items():
        assert record["status"] == "ok", record.get("error")
        assert record["seed"] == seed and f"seed = {seed}" in open(record["log_file"]).read()
        users, values = per_user.load(record["per_user_file"])
        assert len(users) == 60  # every test user of the tiny dataset
        assert values["ndcg@10"].mean() == pytest.approx(record["test_result"]["ndcg@10"], abs=1e-4)
    (recall_row, _) = rows.metric_rows(grid([7, 8, 9]), records)
    for model in ("SASRec", "MaTrRec"):
        values = [records[(model, "tiny", s)]["test_result"]["recall@10"] for s in (7, 8, 9)]
        assert recall_row.summaries[model].mean == pytest.approx(np.mean(values))
        assert recall_row.summaries[model].std == pytest.approx(np.std(values, ddof=1))
    assert len({records[("MaTrRec", "tiny", s)]["test_result"]["ndcg@10"] for s in (7, 8, 9)}) > 1

    with open(os.path.join(output, "table.md"), encoding="utf-8") as f:
        table = f.read()
    assert "MaTrRec vs SASRec" in table and " ± " in table and "Holm-adjusted p" in table
    os.remove(os.path.join(output, "table.md"))
    assert main(["compare", "--report", output]) == 0
    with open(os.path.join(output, "table.md"), encoding="utf-8") as f:
        assert f.read() == table
    assert main(["compare", "--report", output, "--metrics", "recall@5"]) == 0
    with open(os.path.join(output, "table.md"), encoding="utf-8") as f:
        assert "| tiny | recall@5 |" in f.read()
    assert os.path.isfile(os.path.join(output, "significance.csv"))


def test_results_files_without_seeds_still_load(data_path, workdir):
    """A one-seed grid's settings key is unchanged, so an earlier version's records count."""
    output = workdir / "old"
    os.makedirs(output)
    grid = Grid(models=["SASRec"], datasets=["tiny"], settings={**TINY, "data_path": data_path},
                baselines=[], metrics=["recall@10"])
    (cell,) = grid.cells()
    old = {"model": "SASRec", "dataset": "tiny", "status": "ok", "settings_key":
           grid.settings_key(cell), "test_result": {"recall@10": 0.5, "ndcg@10": 0.3},
           "best_valid_result": {"recall@10": 0.4}}  # a record as the earlier version wrote it
    (output / RESULTS_FILE).write_text(json.dumps(old) + "\n")
    log = []
    records = compare(grid, str(output), log=log.append)
    assert "1 already done" in log[0] and records[("SASRec", "tiny", None)]["test_result"] == \
        old["test_result"]
    with open(output / "table.md", encoding="utf-8") as f:
        table = f.read()
    assert "| tiny | recall@10 | 0.5000 |" in table and "±" not in table
