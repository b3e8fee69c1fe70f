"""Benchmark report tables and statistics on hand-made run results."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hrlf.report import COMPLETE_METRICS, bench_report, best_model, complete_table, inter_table, paired_ttest

CONDITIONS = ("l", "a", "v", "la", "lv", "av", "lav", "avg")


def _run(model: str, seed: int, base: float) -> dict:
    metrics = {m: base for m in COMPLETE_METRICS}
    metrics["MAE"] = 2.0 - base
    return {
        "model": model,
        "dataset": "mosi",
        "seed": seed,
        "protocol": {
            "inter": {c: dict(metrics) for c in CONDITIONS},
            "intra": {"0.0": {"F1_non0": base}, "auc": {"F1_non0": base}},
        },
        "protocols": {},
    }


RUNS = [_run("a", s, 0.70 + 0.01 * i) for i, s in enumerate((1, 2, 3))] + [
    _run("b", s, 0.60 + 0.03 * i) for i, s in enumerate((1, 2, 3))
] + [_run("c", s, 0.50) for s in (1, 2, 3)]  # fmt: skip


def test_inter_table_is_mean_and_population_std_times_100():
    table = inter_table(RUNS)
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert f"{71.0:.2f} ± {np.std([70, 71, 72]):.2f}" in row


def test_complete_table_keeps_mae_and_corr_unscaled():
    row = next(line for line in complete_table(RUNS).splitlines() if line.startswith("| b |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{np.mean([1.40, 1.37, 1.34]):.3f} ± {np.std([1.40, 1.37, 1.34]):.3f}"
    assert cells[COMPLETE_METRICS.index("F1_non0") + 1].startswith("63.00")


def test_paired_ttest_matches_scipy_and_best_model_excludes_the_reference():
    t = paired_ttest(RUNS, model="a", reference="b")
    expected = stats.ttest_rel([0.70, 0.71, 0.72], [0.60, 0.63, 0.66])
    assert t["t"] == pytest.approx(expected.statistic) and t["p"] == pytest.approx(expected.pvalue)
    assert t["mean_diff"] == pytest.approx(0.08) and t["seeds"] == [1, 2, 3]
    assert best_model(RUNS, exclude="a") == "b" and best_model(RUNS, exclude="b") == "a"
    assert np.isnan(paired_ttest(RUNS, model="c", reference="c")["p"])


def test_report_names_the_best_other_model():
    report = bench_report(RUNS, reference="a", figure=None)
    assert "Best other model by mean inter-modality Avg.: `b`" in report
    assert "All standard metrics" in report
