"""Evaluation metrics, numerically identical to the field's de-facto definitions.

MOSI / MOSEI regression metrics follow MMSA's ``metricsTop.__eval_mosei_regression`` (thuiar/MMSA), SIMS metrics
follow ``__eval_sims_regression``, and the IEMOCAP per-emotion metrics follow MulT's ``eval_iemocap``
(yaohungt/Multimodal-Transformer). The exact definitions are in ``docs/metrics.md`` and
``field_conventions.md`` §3.

Conventions shared by every function here:

* arguments are keyword-only and always ``(y_true, y_pred)``; sklearn's F1 is always called as
  ``f1_score(y_true, y_pred, average="weighted")`` (weighted F1 is asymmetric, see ``field_conventions.md`` §3.4);
* inputs are array-likes (NumPy arrays, lists, CPU tensors without grad); regression inputs are flattened;
* results are Python floats stored as **fractions** (0.8415, not 84.15) and are not rounded: ×100 and rounding
  happen only when printing;
* every result is finite, so results files stay valid JSON. Where MMSA would produce NaN we return 0.0:
  ``corr`` when either side has zero variance (or fewer than two samples), and the Non0 metrics when every label
  is 0 (empty subset). Non-finite inputs raise ``ValueError`` instead of propagating NaN.

Differences from MMSA that do not change the definitions: values are computed in float64 and not rounded to
4 decimals (MMSA rounds each MOSI/MOSEI value; ``hrlf`` rounds only when printing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import f1_score

__all__ = [
    "LOWER_IS_BETTER",
    "PRIMARY_KEYS",
    "REGRESSION_KEYS",
    "SIMS_KEYS",
    "acc2_has0",
    "acc2_non0",
    "acc5",
    "acc7",
    "corr",
    "emotion_metrics",
    "f1_has0",
    "f1_non0",
    "mae",
    "regression_metrics",
    "robustness_auc",
    "robustness_mean",
    "sims_metrics",
]

#: keys of :func:`regression_metrics`, in table order
REGRESSION_KEYS: tuple[str, ...] = ("MAE", "Corr", "Acc2_has0", "F1_has0", "Acc2_non0", "F1_non0", "Acc5", "Acc7")
#: keys of :func:`sims_metrics` (MMSA's names)
SIMS_KEYS: tuple[str, ...] = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
#: the headline key per metric family (Non0 F1 for MOSI/MOSEI tables, with F1_has0 shown alongside)
PRIMARY_KEYS: dict[str, str] = {"regression": "F1_non0", "sims": "F1_score", "emotions": "Mean_F1"}
#: keys where a smaller value is better (everything else: larger is better)
LOWER_IS_BETTER: frozenset[str] = frozenset({"MAE"})

# MMSA's SIMS class bins: left-open, right-closed intervals with outer edges +-1.01
_SIMS_BINS_2: tuple[float, ...] = (-1.01, 0.0, 1.01)
_SIMS_BINS_3: tuple[float, ...] = (-1.01, -0.1, 0.1, 1.01)
_SIMS_BINS_5: tuple[float, ...] = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)


# ----------------------------------------------------------------------------------------------- input handling


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Flattens both inputs to float64 vectors and checks they match and are finite."""
    truth = np.asarray(y_true, dtype=np.float64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has {truth.size} values but y_pred has {pred.size}")
    if truth.size == 0:
        raise ValueError("cannot compute a metric on zero samples")
    if not np.isfinite(truth).all():
        raise ValueError("y_true contains NaN or infinite values")
    if not np.isfinite(pred).all():
        raise ValueError("y_pred contains NaN or infinite values")
    return truth, pred


def _accuracy(truth: NDArray, pred: NDArray) -> float:
    return float(np.mean(truth == pred))


def _weighted_f1(truth: NDArray, pred: NDArray) -> float:
    # zero_division=0.0 gives the same numbers as sklearn's default ("warn" scores ill-defined classes as 0)
    # without flooding logs with UndefinedMetricWarning; argument order is (y_true, y_pred), always.
    return float(f1_score(truth, pred, average="weighted", zero_division=0.0))


def _pearson(truth: NDArray[np.float64], pred: NDArray[np.float64]) -> float:
    # A constant side has no linear association with anything; MMSA's np.corrcoef would return NaN (and warn).
    # Exact equality (not std == 0) because the float mean of a constant array can differ from the constant.
    if truth.size < 2 or np.all(truth == truth[0]) or np.all(pred == pred[0]):
        return 0.0
    return float(np.corrcoef(pred, truth)[0, 1])


# ------------------------------------------------------------------------------------ MOSI / MOSEI regression


def mae(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error ``mean(|y_pred - y_true|)`` on unclipped values.

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The MAE (lower is better).
    """
    truth, pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(pred - truth)))


def corr(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson correlation between predictions and labels on unclipped values (MMSA's ``np.corrcoef``).

    Edge case: returns 0.0 when either side is constant or there are fewer than two samples (MMSA gives NaN).
    A constant predictor has no linear association with the labels, and 0.0 keeps results files valid JSON.

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        Pearson's r in [-1, 1].
    """
    truth, pred = _pair(y_true, y_pred)
    return _pearson(truth, pred)


def acc2_has0(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Binary accuracy "negative vs non-negative" on all samples: ``(y_pred >= 0) == (y_true >= 0)``.

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The accuracy as a fraction.
    """
    truth, pred = _pair(y_true, y_pred)
    return _accuracy(truth >= 0, pred >= 0)


def f1_has0(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Weighted F1 of ``y_true >= 0`` vs ``y_pred >= 0`` on all samples.

    Computed as ``f1_score(y_true >= 0, y_pred >= 0, average="weighted")``; class weights are the label supports.

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The weighted F1 as a fraction.
    """
    truth, pred = _pair(y_true, y_pred)
    return _weighted_f1(truth >= 0, pred >= 0)


def _non_zero(truth: NDArray[np.float64], pred: NDArray[np.float64]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    keep = truth != 0
    return truth[keep] > 0, pred[keep] > 0


def acc2_non0(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Binary accuracy "negative vs positive": drop samples with ``y_true == 0``, then ``(y_pred > 0) == (y_true > 0)``.

    Edge case: returns 0.0 when every label is 0 (empty subset; MMSA gives NaN).

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The accuracy as a fraction.
    """
    truth, pred = _non_zero(*_pair(y_true, y_pred))
    return _accuracy(truth, pred) if truth.size else 0.0


def f1_non0(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Weighted F1 "negative vs positive": drop ``y_true == 0``, then ``f1_score(y_true > 0, y_pred > 0)``.

    Edge case: returns 0.0 when every label is 0 (empty subset; MMSA gives NaN).

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The weighted F1 as a fraction.
    """
    truth, pred = _non_zero(*_pair(y_true, y_pred))
    return _weighted_f1(truth, pred) if truth.size else 0.0


def _clip_round_accuracy(truth: NDArray[np.float64], pred: NDArray[np.float64], bound: float) -> float:
    # np.round is round-half-to-even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2), exactly as in MMSA
    return _accuracy(np.round(np.clip(truth, -bound, bound)), np.round(np.clip(pred, -bound, bound)))


def acc5(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Five-class accuracy: clip both sides to [-2, 2], round half to even, compare.

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The accuracy as a fraction.
    """
    return _clip_round_accuracy(*_pair(y_true, y_pred), bound=2.0)


def acc7(*, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Seven-class accuracy: clip both sides to [-3, 3], round half to even, compare.

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        The accuracy as a fraction.
    """
    return _clip_round_accuracy(*_pair(y_true, y_pred), bound=3.0)


def regression_metrics(*, y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """All MOSI / MOSEI metrics at once.

    Args:
        y_true: sentiment labels in [-3, 3], any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        ``{"MAE", "Corr", "Acc2_has0", "F1_has0", "Acc2_non0", "F1_non0", "Acc5", "Acc7"}`` as fractions
        (see :data:`REGRESSION_KEYS`).
    """
    truth, pred = _pair(y_true, y_pred)
    return {
        "MAE": mae(y_true=truth, y_pred=pred),
        "Corr": corr(y_true=truth, y_pred=pred),
        "Acc2_has0": acc2_has0(y_true=truth, y_pred=pred),
        "F1_has0": f1_has0(y_true=truth, y_pred=pred),
        "Acc2_non0": acc2_non0(y_true=truth, y_pred=pred),
        "F1_non0": f1_non0(y_true=truth, y_pred=pred),
        "Acc5": acc5(y_true=truth, y_pred=pred),
        "Acc7": acc7(y_true=truth, y_pred=pred),
    }


# ------------------------------------------------------------------------------------------------------ SIMS


def _sims_classes(values: NDArray[np.float64], edges: tuple[float, ...]) -> NDArray[np.int64]:
    # class i <=> edges[i] < value <= edges[i + 1] (MMSA's left-open, right-closed bins)
    return np.digitize(values, np.asarray(edges), right=True) - 1


def sims_metrics(*, y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """CH-SIMS / SIMSv2 metrics (MMSA ``__eval_sims_regression``).

    Both sides are clipped to [-1, 1] **first**; every metric, MAE and Corr included, uses the clipped values.
    Classes are left-open, right-closed bins: Acc-2 ``[-1, 0] | (0, 1]`` (0 counts as negative), Acc-3
    ``[-1, -0.1] | (-0.1, 0.1] | (0.1, 1]``, Acc-5 ``[-1, -0.7] | (-0.7, -0.1] | (-0.1, 0.1] | (0.1, 0.7] | (0.7, 1]``.
    ``F1_score`` is the weighted F1 of the two Acc-2 classes. ``Corr`` is 0.0 for a constant side (see
    :func:`corr`).

    Args:
        y_true: sentiment labels, any shape (flattened).
        y_pred: predictions, same number of values.

    Returns:
        ``{"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}`` as fractions.
    """
    truth, pred = _pair(y_true, y_pred)
    truth, pred = np.clip(truth, -1.0, 1.0), np.clip(pred, -1.0, 1.0)
    truth2, pred2 = _sims_classes(truth, _SIMS_BINS_2), _sims_classes(pred, _SIMS_BINS_2)
    return {
        "Mult_acc_2": _accuracy(truth2, pred2),
        "Mult_acc_3": _accuracy(_sims_classes(truth, _SIMS_BINS_3), _sims_classes(pred, _SIMS_BINS_3)),
        "Mult_acc_5": _accuracy(_sims_classes(truth, _SIMS_BINS_5), _sims_classes(pred, _SIMS_BINS_5)),
        "F1_score": _weighted_f1(truth2, pred2),
        "MAE": float(np.mean(np.abs(pred - truth))),
        "Corr": _pearson(truth, pred),
    }


# --------------------------------------------------------------------------------------------------- IEMOCAP


def emotion_metrics(*, y_true: ArrayLike, y_pred: ArrayLike, names: Sequence[str]) -> dict[str, float]:
    """Per-emotion binary accuracy and weighted F1 (MulT ``eval_iemocap``), plus their means.

    Each emotion is a separate "present / absent" binary task. Predictions are class indices, so logits of shape
    (N, K, 2) must be reduced with ``argmax(-1)`` by the caller.

    Args:
        y_true: (N, K) binary targets in {0, 1}.
        y_pred: (N, K) binary predictions in {0, 1}.
        names: the K emotion names in column order (e.g. ``hrlf.types.IEMOCAP_EMOTIONS``).

    Returns:
        ``{f"{name}_Acc", f"{name}_F1"}`` for every name (in ``names`` order), then ``Mean_Acc`` and ``Mean_F1``
        (unweighted means over emotions), all fractions.
    """
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.ndim != 2 or truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred must both be (N, K); got {truth.shape} and {pred.shape}")
    if truth.shape[0] == 0:
        raise ValueError("cannot compute a metric on zero samples")
    if len(names) != truth.shape[1] or len(set(names)) != len(names):
        raise ValueError(f"names must be {truth.shape[1]} distinct emotion names, got {list(names)}")
    for label, values in (("y_true", truth), ("y_pred", pred)):
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{label} must hold binary class indices in {{0, 1}}")
    truth, pred = truth.astype(np.int64), pred.astype(np.int64)
    out: dict[str, float] = {}
    accs: list[float] = []
    f1s: list[float] = []
    for k, name in enumerate(names):
        accs.append(_accuracy(truth[:, k], pred[:, k]))
        f1s.append(_weighted_f1(truth[:, k], pred[:, k]))
        out[f"{name}_Acc"] = accs[-1]
        out[f"{name}_F1"] = f1s[-1]
    out["Mean_Acc"] = float(np.mean(accs))
    out["Mean_F1"] = float(np.mean(f1s))
    return out


# ------------------------------------------------------------------------------------------------ robustness


def robustness_mean(*, values: ArrayLike) -> float:
    """Plain mean of a metric over a missing-rate sweep (LNLN's table value when the rates are evenly spaced).

    Args:
        values: the metric at each rate.

    Returns:
        The mean.
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if vals.size == 0 or not np.isfinite(vals).all():
        raise ValueError("values must be a non-empty sequence of finite numbers")
    return float(np.mean(vals))


def robustness_auc(*, rates: ArrayLike, values: ArrayLike) -> float:
    """Normalised area under a metric-vs-missing-rate curve (trapezoid rule).

    ``AUC = sum_k (v_k + v_{k+1}) / 2 * (r_{k+1} - r_k) / (r_last - r_first)``.

    Dividing by the rate range makes the AUC a mean over the swept interval: a flat curve at ``v`` gives ``v``,
    whatever the rates. EMT-DLFR (sunlicai/EMT-DLFR) reports the unnormalised sum with step 0.1
    (``sum_k (m_k + m_{k+1}) / 2 * 0.1``); on the usual sweep 0.0, 0.1, ..., 1.0 the range is 1 and the two agree
    exactly (EMT-DLFR then prints ×100, rounded to one decimal). On a sweep over 0.0 ... 0.9 (LNLN) theirs equals
    ours × 0.9.

    Args:
        rates: strictly increasing missing rates, at least two.
        values: the metric at each rate.

    Returns:
        The normalised AUC, in the metric's own units.
    """
    r = np.asarray(rates, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if r.shape != v.shape:
        raise ValueError(f"rates has {r.size} values but values has {v.size}")
    if r.size < 2:
        raise ValueError("an AUC needs at least two rates")
    if not (np.isfinite(r).all() and np.isfinite(v).all()):
        raise ValueError("rates and values must be finite")
    steps = np.diff(r)
    if not (steps > 0).all():
        raise ValueError("rates must be strictly increasing")
    area = float(np.sum((v[:-1] + v[1:]) / 2.0 * steps))
    return area / float(r[-1] - r[0])
