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


def _with_health(run: dict, q_std: float, mi: float) -> dict:
    post = {
        f"{k}.{c}.{m}": q_std if c == "Q" else 0.5
        for k in ("std", "probe")
        for c in "QU"
        for m in ("language", "audio", "vision")
    }
    during = {f"mi.{e}": mi for e in ("E1", "E2", "E3")}
    during |= {f"disc_acc_teacher.{e}": 0.6 for e in ("E1", "E2", "E3")}
    during |= {f"disc_acc_student.{e}": 0.7 for e in ("E1", "E2", "E3")}
    during |= {f"grad_share.{t}": 0.25 for t in ("frf", "hmi", "hal", "kd")}
    return {**run, "diagnostics": {"student": post}, "selection": {"student": {"diagnostics": during}}}


def test_health_table_averages_seeds_and_only_lists_models_with_diagnostics():
    from hrlf.report import health_table

    runs = [_with_health(_run("hrlf", 1, 0.7), 0.2, -1.0), _with_health(_run("hrlf", 2, 0.7), 0.4, -0.5)]
    runs.append(_run("backbone", 1, 0.6))
    table = health_table(runs)
    assert "backbone" not in table
    row = next(line for line in table.splitlines() if line.startswith("| hrlf"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.30/0.30/0.30"  # std Q, mean of 0.2 and 0.4
    assert cells[5] == "-0.75/-0.75/-0.75"  # the MI bound per scale
    assert cells[6] == "0.60/0.70" and cells[7] == "0.25/0.25/0.25/0.25"
    assert health_table([_run("backbone", 1, 0.6)]) == ""
    assert "Mechanism health" in bench_report(runs, reference=None, figure=None)
