"""Benchmark report tables and statistics on hand-made run results."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hrlf.report import (
    COMPLETE_METRICS,
    bench_report,
    best_model,
    complete_table,
    cost_table,
    inter_table,
    paired_ttest,
    per_seed_table,
    valid_table,
)

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
    assert cells[2] == "0.20/0.20/0.20"  # the lowest seed's std Q
    assert cells[6] == "-0.75/-0.75/-0.75"  # the MI bound per scale
    assert cells[7] == "0.60/0.70/0.65" and cells[8] == "0.25/0.25/0.25/0.25/–"  # no spread-floor term
    assert health_table([_run("backbone", 1, 0.6)]) == ""
    # a discriminator that calls everything fake: perfect on student features, at chance on both together
    fooled = _with_health(_run("hrlf", 3, 0.7), 0.2, -1.0)
    fooled["selection"]["student"]["diagnostics"] |= {
        f"disc_acc_{w}.{e}": float(w == "student") for w in ("teacher", "student") for e in ("E1", "E2", "E3")
    }
    row = next(line for line in health_table([fooled]).splitlines() if line.startswith("| hrlf"))
    assert [c.strip() for c in row.strip("|").split("|")][7] == "0.00/1.00/0.50"
    assert "Mechanism health" in bench_report(runs, reference=None, figure=None)


def _text_only_run(model: str, seed: int, base: float) -> dict:
    """A run on a language-only file: every condition without language is one constant prediction."""
    run = _run(model, seed, base)
    inter = run["protocol"]["inter"]
    for c in ("a", "v", "av"):
        inter[c] = {k: 0.123 for k in inter[c]}
    for c in ("la", "lv", "lav"):
        inter[c] = dict(inter["l"])
    for k in inter["avg"]:  # what the evaluation stores: the mean over all six missing conditions
        inter["avg"][k] = float(np.mean([inter[c][k] for c in ("l", "a", "v", "la", "lv", "av")]))
    return run


def test_conditions_of_modalities_absent_from_the_file_are_left_out_and_avg_is_over_the_rest():
    from hrlf.report import kept_conditions

    runs = [_text_only_run("a", s, 0.70 + 0.01 * i) for i, s in enumerate((1, 2))]
    runs += [_text_only_run("b", s, 0.60) for s in (1, 2)]
    report = bench_report(runs, reference="b", figure=None, absent=["audio", "vision"])
    assert "12.30" not in report  # no constant-prediction cell
    headers = [line for line in report.splitlines() if line.startswith("| Model | {l}")]
    assert len(headers) == 3 and all(line == "| Model | {l} | Avg. | {l,a,v} |" for line in headers)
    row = next(line for line in report.splitlines() if line.startswith("| a |"))
    assert row == "| a | 70.50 ± 0.50 | 70.50 ± 0.50 | 70.50 ± 0.50 |"
    assert "Audio and vision are absent from the data file" in report
    assert "({a}, {v}, {l,a}, {l,v}, {a,v}) are left out" in report and "Avg. is the mean over {l};" in report
    assert "mean of the missing conditions {l}" in report and "six missing conditions" not in report
    t = paired_ttest(runs, model="a", reference="b", absent=["audio", "vision"])
    assert t["mean_diff"] == pytest.approx(0.105)  # on the recomputed Avg. (the stored one would give 0.0525)
    # without absent modalities the six-condition Avg. of the paper is kept
    assert kept_conditions(()) == (list(INTER_ORDER), ["l", "a", "v", "la", "lv", "av"])
    assert kept_conditions(("vision",)) == (["l", "a", "la", "avg", "lav"], ["l", "a", "la"])
    assert "absent from the data file" not in bench_report(runs, reference=None, figure=None)


INTER_ORDER = ("l", "a", "v", "la", "lv", "av", "avg", "lav")


def test_absent_modalities_come_from_the_runs_training_counts(tmp_path):
    import json

    from hrlf.report import absent_modalities

    dirs = []
    for i, available in enumerate(
        ({"language": 10, "audio": 0, "vision": 0}, {"language": 9, "audio": 0, "vision": 2})
    ):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "checkpoint.json").write_text(json.dumps({"data": {"available": available}}))
        dirs.append(tmp_path / str(i))
    assert absent_modalities(dirs[:1]) == ["audio", "vision"]
    assert absent_modalities(dirs) == ["audio"]
    assert absent_modalities([*dirs, tmp_path / "none"]) == [] and absent_modalities([]) == []


def test_bench_on_a_language_only_file_leaves_out_audio_and_vision(tmp_path, capsys):
    """End to end: a file whose clips have no audio or vision (as `hrlf extract` writes text-only)."""
    from hrlf.cli import main
    from hrlf.data.labels import LabelRow
    from hrlf.extract.pipeline import EXTRACTOR_DIMS, ClipFeatures, ExtractCfg, _part_path, write_mmsa

    parts = tmp_path / "t.pkl.parts"
    parts.mkdir()
    rows, rng = [], np.random.default_rng(0)
    for i in range(36):
        mode = "train" if i < 20 else "valid" if i < 28 else "test"
        sid = f"t{i}$_$0"
        rows.append(LabelRow(video_id=f"t{i}", clip_id="0", text="x", label=float(i % 7 - 3), mode=mode,
                             sample_id=sid))  # fmt: skip
        language = rng.standard_normal((5, EXTRACTOR_DIMS["language"])).astype(np.float32)
        ClipFeatures(sample_id=sid, transcript="x", alignment="uniform", duration=0.0,
                     features={"language": language, "audio": None, "vision": None},
                     input_ids=np.arange(101, 106)).save(_part_path(parts, sid))  # fmt: skip
    data = tmp_path / "t.pkl"
    write_mmsa(rows, parts=parts, out=data, skipped={}, cfg=ExtractCfg(max_len=8), text_only=True)
    out = tmp_path / "bench"
    argv = ["bench", "--models", "backbone", "--seeds", "1", "--data", str(data), "--out", str(out),
            "--no-progress", "--set", "model.d_model=8", "--set", "model.num_heads=2", "--set", "train.epochs=1",
            "--set", "train.progress=false", "--set", "eval.rates=[0.0,1.0]"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    report = (out / "report.md").read_text()
    tables = [line for line in report.splitlines() if line.startswith("| Model | {")]
    assert tables == ["| Model | {l} | Avg. | {l,a,v} |"] * 3  # F1 Non0, F1 Has0, MAE
    assert "Audio and vision are absent from the data file" in report


def test_valid_table_reads_the_validation_split_and_skips_runs_without_it():
    runs = []
    for i, seed in enumerate((1, 2)):
        run = _run("a", seed, 0.70)
        inter = {c: {"F1_non0": 0.60 + 0.02 * i} for c in CONDITIONS}
        inter["lav"] = {"F1_non0": 0.80}
        run["valid_protocol"] = {"inter": inter}
        runs.append(run)
    runs.append(_run("old", 1, 0.70))  # trained before validation robustness was recorded
    table = valid_table(runs)
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert f"{61.0:.2f} ± {np.std([60, 62]):.2f}" in row and "80.00 ± 0.00" in row and row.endswith("| 2 |")
    assert "| old | – | – | 0 |" in table
    assert "## Validation split" in bench_report(runs, reference=None, figure=None)


def test_per_seed_table_lists_each_seed_s_test_and_valid_avg_and_marks_what_is_missing():
    runs = [_run("a", 1, 0.70), _run("a", 2, 0.72), _run("b", 2, 0.60)]
    runs[0]["valid_protocol"] = {"inter": {c: {"F1_non0": 0.655} for c in CONDITIONS}}
    table = per_seed_table(runs)
    assert table.splitlines()[0] == "| Model | split | 1 | 2 |"
    assert "| a | test | 70.00 | 72.00 |" in table
    assert "| a | valid | 65.50 | – |" in table  # seed 2 has no validation protocol
    assert "| b | test | – | 60.00 |" in table
    assert "## Per seed" in bench_report(runs, reference=None, figure=None)


def test_cost_table_averages_time_and_keeps_the_highest_memory():
    runs = [
        {
            **_run("a", s, 0.7),
            "torch_threads": 1,
            "resources": {"train_seconds": t, "evaluate_seconds": 30.0, "peak_rss_mb": m},
        }
        for s, t, m in ((1, 600.0, 2048.0), (2, 1200.0, 3072.0))
    ] + [_run("b", 1, 0.6)]  # written before resources were recorded: left out of the table
    table = cost_table(runs)
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert [c.strip() for c in row.strip("|").split("|")] == ["a", "15.0 ± 5.0", "0.50 ± 0.00", "3.00", "1", "2"]
    assert "| b |" not in table
    assert "## What the runs cost" in bench_report(runs, reference=None, figure=None)
    assert cost_table(RUNS) == "" and "## What the runs cost" not in bench_report(RUNS, reference=None, figure=None)
