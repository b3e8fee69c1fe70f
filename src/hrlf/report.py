"""Paper-style reports from ``results.json`` files: Table 1/2 layouts, intra summaries, t-tests, CSV and curves.

Numbers are stored as fractions and shown ×100, as mean ± std over seeds (population std, ``np.std``, as MMSA's
multi-seed CSVs), rounded only when printed.

Modalities absent from the data file (a language-only file: audio and vision in no clip) are passed as
``absent``: the inter-modality conditions that name one of them are left out of the tables (they repeat a
condition without it, or give the constant prediction of a model without input), and Avg. is recomputed as the
mean over the missing conditions that remain (see :func:`kept_conditions`); ``{l,a,v}`` stays as complete data.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from hrlf.missing.protocol import MISSING_CONDITIONS
from hrlf.types import MODALITIES, SHORT, Modality

#: column order of the paper's Tables 1-3
INTER_COLUMNS = ("l", "a", "v", "la", "lv", "av", "avg", "lav")
_HEADER = {
    "l": "{l}",
    "a": "{a}",
    "v": "{v}",
    "la": "{l,a}",
    "lv": "{l,v}",
    "av": "{a,v}",
    "avg": "Avg.",
    "lav": "{l,a,v}",
}
assert set(MISSING_CONDITIONS) < set(INTER_COLUMNS)


def kept_conditions(absent: Sequence[Modality] = ()) -> tuple[list[str], list[str]]:
    """Table columns and the missing conditions Avg. averages over, without the conditions naming ``absent``.

    Returns:
        ``(columns, averaged)``: columns in :data:`INTER_COLUMNS` order (``avg`` and ``lav`` always kept), and the
        kept conditions of :data:`MISSING_CONDITIONS` (all six when nothing is absent: the paper's Avg.).
    """
    gone = {SHORT[m] for m in absent}
    averaged = [c for c in MISSING_CONDITIONS if not gone & set(c)]
    columns = [c for c in INTER_COLUMNS if c in ("avg", "lav") or not gone & set(c)]
    return columns, averaged


def absent_modalities(run_dirs: Sequence[str | Path]) -> list[Modality]:
    """Modalities no training clip had in any of these runs (``data.available`` of each ``checkpoint.json``).

    A run folder without ``checkpoint.json``, or a checkpoint without the counts, counts as having every modality.
    """
    counts: dict[Modality, int] = dict.fromkeys(MODALITIES, 0)
    for run_dir in run_dirs:
        try:
            meta = json.loads((Path(run_dir) / "checkpoint.json").read_text())
            available = meta["data"]["available"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        for m in MODALITIES:
            counts[m] += int(available.get(m, 1))
    return [m for m in MODALITIES if counts[m] == 0] if run_dirs else []


def _inter_value(
    results: dict[str, Any], condition: str, key: str, averaged: Sequence[str], *, where: str = "protocol"
) -> float:
    """One inter-modality value (``where``: ``protocol`` = test, ``valid_protocol``); Avg. is recomputed when some
    conditions are left out."""
    inter = results[where]["inter"]
    if condition != "avg" or len(averaged) == len(MISSING_CONDITIONS):
        return inter[condition][key]
    return float(np.mean([inter[c][key] for c in averaged])) if averaged else math.nan


def absent_note(absent: Sequence[Modality]) -> str:
    """Why some inter-modality cells are missing from the report (empty when nothing is absent)."""
    if not absent:
        return ""
    columns, averaged = kept_conditions(absent)
    dropped = [_HEADER[c] for c in MISSING_CONDITIONS if c not in columns]
    names = " and ".join(absent)
    return (
        f"{names.capitalize()} {'is' if len(absent) == 1 else 'are'} absent from the data file (no training clip "
        f"has {'it' if len(absent) == 1 else 'them'}), so the conditions that name "
        f"{'it' if len(absent) == 1 else 'them'} ({', '.join(dropped)}) are left out: each would repeat the "
        "condition without the absent modality, or give the constant prediction of a model with no input. "
        "Avg. is the mean over "
        f"{', '.join(_HEADER[c] for c in averaged) or 'no condition'}; {{l,a,v}} is complete data (every modality "
        "the file has)."
    )


def is_emotions(results: dict[str, Any]) -> bool:
    inter = results["protocol"].get("inter") or results["protocol"].get("intra")
    first = next(iter(inter.values()))
    return "Mean_F1" in first


#: the order in which HRLF and CorrKD print IEMOCAP emotions (the files store Neutral, Happy, Sad, Angry)
PAPER_EMOTION_ORDER = ("Happy", "Sad", "Angry", "Neutral")


def emotion_names(results: dict[str, Any]) -> list[str]:
    inter = results["protocol"].get("inter") or results["protocol"].get("intra")
    first = next(iter(inter.values()))
    names = [k[: -len("_F1")] for k in first if k.endswith("_F1") and k != "Mean_F1"]
    rank = {name: i for i, name in enumerate(PAPER_EMOTION_ORDER)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


def _fmt(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float) * scale
    if arr.size == 0:
        return "n/a"
    if arr.size == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"


def group_runs(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by model name, in first-seen order, each list sorted by seed."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        grouped[r["model"]].append(r)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in grouped.items()}


def inter_table(runs: Sequence[dict[str, Any]], *, metric: str = "F1_non0", absent: Sequence[Modality] = ()) -> str:
    """Table 1 layout (one row per model) or, for emotions, Table 2 layout (one row per model and emotion)."""
    grouped = group_runs(runs)
    columns, averaged = kept_conditions(absent)
    header = "| Model | " + " | ".join(_HEADER[c] for c in columns) + " |"
    if is_emotions(runs[0]):
        header = "| Model | Emotion | " + " | ".join(_HEADER[c] for c in columns) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for model, rs in grouped.items():
        if is_emotions(rs[0]):
            for i, emo in enumerate(emotion_names(rs[0])):
                cells = [_fmt([_inter_value(r, c, f"{emo}_F1", averaged) for r in rs]) for c in columns]
                lines.append(f"| {model if i == 0 else ''} | {emo} | " + " | ".join(cells) + " |")
        else:
            cells = [_fmt([_inter_value(r, c, metric, averaged) for r in rs]) for c in columns]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def intra_table(runs: Sequence[dict[str, Any]], *, metric: str = "F1_non0") -> str:
    """Rates as columns (p = 0.0 ... 1.0) plus the normalised AUC; one row per model (and emotion)."""
    grouped = group_runs(runs)
    rates = [k for k in runs[0]["protocol"]["intra"] if k != "auc"]
    emotions = is_emotions(runs[0])
    keys = [f"{e}_F1" for e in emotion_names(runs[0])] if emotions else [metric]
    header = "| Model | " + ("Emotion | " if emotions else "") + " | ".join(f"p={r}" for r in rates) + " | AUC |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for model, rs in grouped.items():
        for i, key in enumerate(keys):
            cells = [_fmt([r["protocol"]["intra"][rate][key] for r in rs], digits=1) for rate in rates]
            cells.append(_fmt([r["protocol"]["intra"]["auc"][key] for r in rs], digits=1))
            label = f"| {model if i == 0 else ''} | {key[:-3]} | " if emotions else f"| {model} | "
            lines.append(label + " | ".join(cells) + " |")
    return "\n".join(lines)


def valid_table(runs: Sequence[dict[str, Any]], *, metric: str = "F1_non0", absent: Sequence[Modality] = ()) -> str:
    """Per model: the inter-modality Avg. and the complete condition on the validation split (``valid_protocol``
    in results.json), the number to compare recipes by; runs from before it was recorded are left out (``hrlf eval
    RUN --split valid --protocol inter`` gives it for them)."""
    _, averaged = kept_conditions(absent)
    lines = ["| Model | valid Avg. | valid {l,a,v} | seeds |", "|---|---|---|---|"]
    for model, rs in group_runs(runs).items():
        have = [r for r in rs if "valid_protocol" in r]
        if not have:
            lines.append(f"| {model} | – | – | 0 |")
            continue
        key = "Mean_F1" if "Mean_F1" in have[0]["valid_protocol"]["inter"]["avg"] else metric
        avg = _fmt([_inter_value(r, "avg", key, averaged, where="valid_protocol") for r in have])
        full = _fmt([r["valid_protocol"]["inter"]["lav"][key] for r in have])
        lines.append(f"| {model} | {avg} | {full} | {len(have)} |")
    return "\n".join(lines)


def per_seed_table(runs: Sequence[dict[str, Any]], *, metric: str = "F1_non0", absent: Sequence[Modality] = ()) -> str:
    """Per model and seed: the inter-modality Avg. on test and on validation (:func:`avg_scores`), the numbers the
    paired t-tests and the recipe choices use, so that a reader can redo them from the report alone ("–": not
    recorded for that run)."""
    seeds = sorted({int(r["seed"]) for r in runs})
    lines = ["| Model | split | " + " | ".join(str(s) for s in seeds) + " |", "|" + "---|" * (len(seeds) + 2)]
    for model, rs in group_runs(runs).items():
        for split, where in (("test", "protocol"), ("valid", "valid_protocol")):
            scores = avg_scores(rs, metric=metric, absent=absent, where=where)
            cells = [f"{100 * scores[s]:.2f}" if s in scores else "–" for s in seeds]
            lines.append(f"| {model} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def avg_scores(
    runs: Sequence[dict[str, Any]], *, metric: str, absent: Sequence[Modality] = (), where: str = "protocol"
) -> dict[int, float]:
    """Per seed: the inter-modality Avg. of ``metric`` (emotions: mean over emotions of the per-emotion F1), over
    the conditions :func:`kept_conditions` keeps; ``where``: ``protocol`` (test) or ``valid_protocol`` (runs
    without it are left out)."""
    _, averaged = kept_conditions(absent)
    out = {}
    for r in runs:
        if where not in r:
            continue
        key = "Mean_F1" if "Mean_F1" in r[where]["inter"]["avg"] else metric
        out[int(r["seed"])] = float(_inter_value(r, "avg", key, averaged, where=where))
    return out


def paired_ttest(
    runs: Sequence[dict[str, Any]],
    *,
    model: str,
    reference: str,
    metric: str = "F1_non0",
    absent: Sequence[Modality] = (),
) -> dict[str, Any]:
    """Paired t-test over the seeds both models share, on the inter-modality Avg. (the paper's significance test)."""
    grouped = group_runs(runs)
    a = avg_scores(grouped[model], metric=metric, absent=absent)
    b = avg_scores(grouped[reference], metric=metric, absent=absent)
    seeds = sorted(set(a) & set(b))
    result: dict[str, Any] = {"model": model, "reference": reference, "seeds": seeds, "metric": f"inter avg {metric}"}
    diffs = [a[s] - b[s] for s in seeds]
    result["mean_diff"] = float(np.mean(diffs)) if diffs else float("nan")
    if len(seeds) < 2 or np.allclose(diffs, diffs[0]):
        result.update(t=float("nan"), p=float("nan"))
    else:
        t, p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        result.update(t=float(t), p=float(p))
    return result


def best_model(
    runs: Sequence[dict[str, Any]], *, exclude: str, metric: str = "F1_non0", absent: Sequence[Modality] = ()
) -> str | None:
    """The model other than ``exclude`` with the highest mean inter-modality Avg. over its seeds."""
    means = {
        model: float(np.mean(list(avg_scores(rs, metric=metric, absent=absent).values())))
        for model, rs in group_runs(runs).items()
        if model != exclude
    }
    return max(means, key=lambda m: means[m]) if means else None


def condition_name(results: dict[str, Any], protocol: str, condition: str) -> str:
    """The protocol name of one condition as written in the results file (aggregates are named by their rule)."""
    if condition == "avg":
        return "mean of the six missing conditions"
    if condition == "auc":
        return "trapezoid AUC over the rate sweep, normalised by its range"
    described = (results.get("protocols") or {}).get("eval") or {}
    return (described.get(f"{protocol}.{condition}") or {}).get("name", "")


CSV_FIELDS = ["model", "dataset", "seed", "protocol", "condition", "protocol_name", "train_protocol", "metric", "value"]


def results_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long format: one row per model, dataset, seed, protocol, condition and metric, with the protocol names."""
    rows = []
    for r in runs:
        train = ((r.get("protocols") or {}).get("train") or {}).get("name", "none (complete data)")
        for protocol, conditions in r["protocol"].items():
            for condition, values in conditions.items():
                name = condition_name(r, protocol, condition)
                for metric, value in values.items():
                    rows.append(
                        {
                            "model": r["model"],
                            "dataset": r["dataset"],
                            "seed": r["seed"],
                            "protocol": protocol,
                            "condition": condition,
                            "protocol_name": name,
                            "train_protocol": train,
                            "metric": metric,
                            "value": value,
                        }
                    )
    return rows


def results_csv(runs: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(results_rows(runs))
    return buf.getvalue()


def plot_intra(runs: Sequence[dict[str, Any]], path: str | Path, *, metric: str = "F1_non0") -> None:
    """Intra-modality curves (the paper's Fig. 3/4 style): metric vs missing rate, mean ± std band per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = group_runs(runs)
    emotions = is_emotions(runs[0])
    keys = [f"{e}_F1" for e in emotion_names(runs[0])] if emotions else [metric]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for model, rs in grouped.items():
            rates = [k for k in rs[0]["protocol"]["intra"] if k != "auc"]
            x = np.array([float(r) for r in rates])
            y = np.array([[r["protocol"]["intra"][rate][key] * 100 for rate in rates] for r in rs])
            mean, std = y.mean(axis=0), y.std(axis=0)
            ax.plot(x, mean, marker="o", markersize=3, label=model)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("missing rate p (all modalities)")
        ax.set_ylabel(f"{key} (%)")
        ax.set_title(key if emotions else f"{runs[0]['dataset']}: {key}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_summary(results: dict[str, Any]) -> str:
    """What ``hrlf train`` and ``hrlf eval`` print: the inter table and the intra summary of one run."""
    parts = [f"model {results['model']} on {results['dataset']}, seed {results['seed']}"]
    proto = results["protocol"]
    emotions = is_emotions(results)
    if "inter" in proto:
        if emotions:
            parts += ["", "Inter-modality missingness, per-emotion F1 (%):", inter_table([results])]
        else:
            parts += ["", "Inter-modality missingness, F1 Non0 (%):", inter_table([results], metric="F1_non0")]
            parts += ["", "Inter-modality missingness, F1 Has0 (%):", inter_table([results], metric="F1_has0")]
            parts += ["", "Inter-modality missingness, MAE:", _mae_table([results])]
    if "intra" in proto:
        parts += ["", "Intra-modality missingness (rate p on all modalities), F1 (%):"]
        parts.append(intra_table([results], metric="F1_non0"))
    health = health_table([results])
    if health:
        parts += ["", "Mechanism health (student):", health]
    return "\n".join(parts)


def _mae_table(runs: Sequence[dict[str, Any]], absent: Sequence[Modality] = ()) -> str:
    grouped = group_runs(runs)
    columns, averaged = kept_conditions(absent)
    header = "| Model | " + " | ".join(_HEADER[c] for c in columns) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for model, rs in grouped.items():
        cells = [_fmt([_inter_value(r, c, "MAE", averaged) for r in rs], scale=1.0, digits=3) for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: the field's standard regression metrics, in the usual column order (MAE and Corr are not percentages)
COMPLETE_METRICS = ("MAE", "Corr", "Acc2_has0", "F1_has0", "Acc2_non0", "F1_non0", "Acc5", "Acc7")


def complete_table(runs: Sequence[dict[str, Any]]) -> str:
    """Every standard regression metric on complete data (condition {l,a,v}), mean ± std over seeds."""
    lines = ["| Model | " + " | ".join(COMPLETE_METRICS) + " |", "|" + "---|" * (len(COMPLETE_METRICS) + 1)]
    for model, rs in group_runs(runs).items():
        cells = []
        for metric in COMPLETE_METRICS:
            values = [r["protocol"]["inter"]["lav"][metric] for r in rs]
            cells.append(_fmt(values, scale=1.0, digits=3) if metric in ("MAE", "Corr") else _fmt(values))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_SHORT = {"language": "l", "audio": "a", "vision": "v"}


def _mean_of(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(found)) if found else None


def _slash(values: Sequence[float | None], digits: int = 2) -> str:
    return "/".join("–" if v is None else f"{v:.{digits}f}" for v in values)


def health_table(runs: Sequence[dict[str, Any]], *, stage: str = "student") -> str:
    """Mechanism health per model (HRLF and its ablations): is each mechanism alive? Mean over seeds.

    From ``results.json``: the codes' across-sample std and the linear probes (``diagnostics.<stage>``, validation
    split, complete data) and, at the selected epoch, the JSD bound per scale, the discriminators' accuracy and
    each auxiliary term's gradient norm on the encoders relative to the task's (``selection.<stage>.diagnostics``).
    Empty when no run recorded diagnostics.
    """
    grouped = {m: rs for m, rs in group_runs(runs).items() if any((r.get("diagnostics") or {}).get(stage) for r in rs)}
    if not grouped:
        return ""
    header = (
        "| Model | std Q l/a/v | lowest seed's std Q l/a/v | std U l/a/v | probe Q l/a/v | probe U l/a/v "
        "| MI bound E1/E2/E3 (nats) | D acc teacher/student/both | grad share FRF/HMI/HAL/KD/floor |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for model, rs in grouped.items():
        post = [(r.get("diagnostics") or {}).get(stage) or {} for r in rs]
        during = [((r.get("selection") or {}).get(stage) or {}).get("diagnostics") or {} for r in rs]

        def post_cells(kind: str, code: str, post: list[dict[str, Any]] = post) -> str:
            return _slash([_mean_of([d.get(f"{kind}.{code}.{m}") for d in post]) for m in _SHORT])

        def during_mean(key: str, during: list[dict[str, Any]] = during) -> float | None:
            return _mean_of([d.get(key) for d in during])

        def lowest(code: str, post: list[dict[str, Any]] = post) -> str:  # a mean hides the one collapsed seed
            values = [[d.get(f"std.{code}.{m}") for d in post] for m in _SHORT]
            return _slash([min((v for v in vs if v is not None), default=None) for vs in values])

        mi = _slash([during_mean(f"mi.{e}") for e in ("E1", "E2", "E3")])
        acc_t = _mean_of([during_mean(f"disc_acc_teacher.{e}") for e in ("E1", "E2", "E3")])
        acc_s = _mean_of([during_mean(f"disc_acc_student.{e}") for e in ("E1", "E2", "E3")])
        # both: accuracy over teacher and student features together (each batch holds as many of one as of the other)
        acc_both = None if acc_t is None or acc_s is None else (acc_t + acc_s) / 2
        shares = _slash([during_mean(f"grad_share.{t}") for t in ("frf", "hmi", "hal", "kd", "spread")])
        lines.append(
            f"| {model} | {post_cells('std', 'Q')} | {lowest('Q')} | {post_cells('std', 'U')} | "
            f"{post_cells('probe', 'Q')} | "
            f"{post_cells('probe', 'U')} | {mi} | {_slash([acc_t, acc_s, acc_both])} | {shares} |"
        )
    return "\n".join(lines)


HEALTH_NOTE = (
    "std: across-sample std of the student's sentiment (Q) and modality (U) codes per modality (0 = collapsed), "
    "the mean over seeds and the lowest seed's (a mean hides one collapsed seed); "
    "probe: cross-validated linear probe of the label from the code (R² for regression, balanced accuracy for "
    "emotions; a working factorization has Q above U); MI bound: the JSD estimate per scale, between −2 log 2 = "
    "−1.386 (no information) and 0; D acc: discriminator accuracy on teacher / student features / both together "
    "(both: 1.0 = D wins outright, 0.5 = chance; read it, not the student's alone: a D that calls everything fake "
    "scores 1.0 on student features and 0.5 on both); grad share: each weighted term's gradient norm on the "
    "encoders over the task's (floor: the spread-floor hinge, `spread_floor`; – where a run has no such term). "
    "Validation split (std, probe) and the selected epoch's training batches (MI, D acc, grad share)."
)


def cost_table(runs: Sequence[dict[str, Any]]) -> str:
    """Per model: training and evaluation wall time (mean ± std over seeds) and the highest peak resident memory,
    from each run's ``resources`` (runs written before it was recorded are left out; no such run: empty)."""
    lines = [
        "| Model | training (min) | evaluation (min) | peak RSS (GB, max) | torch threads | runs |",
        "|---|---|---|---|---|---|",
    ]
    for model, rs in group_runs(runs).items():
        cost = [r["resources"] for r in rs if "resources" in r]
        if not cost:
            continue
        train = np.array([c["train_seconds"] for c in cost]) / 60
        evaluate = np.array([c["evaluate_seconds"] for c in cost]) / 60
        rss = [c["peak_rss_mb"] for c in cost if c.get("peak_rss_mb") is not None]
        threads = sorted({int(r["torch_threads"]) for r in rs if "resources" in r and "torch_threads" in r})
        peak = f"{max(rss) / 1024:.2f}" if rss else "—"
        lines.append(
            f"| {model} | {train.mean():.1f} ± {train.std():.1f} | {evaluate.mean():.2f} ± {evaluate.std():.2f} | "
            f"{peak} | {', '.join(map(str, threads)) or '—'} | {len(cost)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def bench_report(
    runs: Sequence[dict[str, Any]],
    *,
    reference: str | None,
    figure: str | None,
    absent: Sequence[Modality] = (),
) -> str:
    """The ``report.md`` of ``hrlf bench``: tables as mean ± std over seeds and t-tests against ``reference``.

    ``absent``: modalities no clip of the data file has (:func:`absent_modalities`); their conditions are left
    out and the report says why.
    """
    grouped = group_runs(runs)
    first = runs[0]
    emotions = is_emotions(first)
    seeds = sorted({r["seed"] for r in runs})
    columns, averaged = kept_conditions(absent)
    out = [
        f"# Benchmark: {first['dataset']}",
        "",
        f"Models: {', '.join(grouped)}. Seeds: {', '.join(map(str, seeds))}. "
        "Values ×100, mean ± std (population) over seeds; test split, checkpoint selected on valid.",
        "",
    ]
    if absent:
        out += [absent_note(absent), ""]
    if emotions:
        out += ["## Inter-modality missingness (Table 2 layout, per-emotion F1)", "", inter_table(runs, absent=absent)]
        out += [""]
    else:
        out += ["## Inter-modality missingness (Table 1 layout, F1 Non0)", "", inter_table(runs, absent=absent), ""]
        out += ["## Inter-modality missingness, F1 Has0", "", inter_table(runs, metric="F1_has0", absent=absent), ""]
        out += ["## Inter-modality missingness, MAE", "", _mae_table(runs, absent=absent), ""]
        out += ["## All standard metrics, complete modalities {l,a,v}", "", complete_table(runs), ""]
    out += ["## Intra-modality missingness", "", intra_table(runs), ""]
    key = "mean per-emotion F1" if emotions else "F1 Non0"
    out += [
        f"## Validation split: inter-modality Avg. and complete condition ({key})",
        "",
        valid_table(runs, absent=absent),
        "",
        "For choosing between recipes without the test split; each checkpoint is selected on its own criterion.",
        "",
        f"## Per seed: inter-modality Avg. ({key}) on test and validation",
        "",
        per_seed_table(runs, absent=absent),
        "",
    ]
    health = health_table(runs)
    if health:
        out += ["## Mechanism health (HRLF's student)", "", health, "", HEALTH_NOTE, ""]
    cost = cost_table(runs)
    if cost:
        out += [
            "## What the runs cost",
            "",
            cost,
            "",
            "Wall time of each run (training: every stage; evaluation: test and validation protocols and the "
            "diagnostics) and the peak resident memory of the process that trained it, on the machine and under the "
            "load of the day: a record, not a benchmark (those are under `benchmarks/`).",
            "",
        ]
    out += ["## Protocols", ""]
    for model, rs in grouped.items():
        train = ((rs[0].get("protocols") or {}).get("train") or {}).get("name", "none (complete data)")
        out.append(f"- `{model}` trained with `{train}`")
    eval_names = [
        f"mean of the missing conditions {', '.join(_HEADER[k] for k in averaged)}"
        if p == "inter" and c == "avg" and absent
        else condition_name(first, p, c)
        for p, conds in first["protocol"].items()
        for c in conds
        if p != "inter" or c in columns
    ]
    out += [f"- evaluation: {', '.join(f'`{n}`' for n in eval_names if n)}", ""]
    if figure:
        out += [f"![intra-modality curves]({figure})", ""]
    if reference and reference in grouped and len(grouped) > 1:
        out += [
            f"## Paired t-test against `{reference}` (inter-modality Avg.)",
            "",
            "| Model | mean diff (pts) | t | p | seeds |",
            "|---|---|---|---|---|",
        ]
        for model in grouped:
            if model == reference:
                continue
            t = paired_ttest(runs, model=model, reference=reference, absent=absent)
            out.append(f"| {model} | {t['mean_diff'] * 100:+.2f} | {t['t']:.3f} | {t['p']:.4f} | {len(t['seeds'])} |")
        best = best_model(runs, exclude=reference, absent=absent)
        if best is not None and len(grouped) > 2:
            t = paired_ttest(runs, model=reference, reference=best, absent=absent)
            out += [
                "",
                f"Best other model by mean inter-modality Avg.: `{best}`; `{reference}` - `{best}` = "
                f"{t['mean_diff'] * 100:+.2f} pts (paired t = {t['t']:.3f}, p = {t['p']:.4f}, "
                f"{len(t['seeds'])} seeds).",
            ]
        out.append("")
    return "\n".join(out)
