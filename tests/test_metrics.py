"""Golden and parity tests for hrlf.metrics (field_conventions.md §3)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from hrlf import metrics as M
from hrlf.types import IEMOCAP_EMOTIONS

# ------------------------------------------------------------------------------------ hand-computed MOSI golden
#
# idx        0     1     2     3     4     5
# y_true   2.5   0.0  -0.5   1.5  -2.5   0.5
# y_pred   1.6  -0.2   0.5   2.4  -3.5   0.0
#
# MAE: |.9|+|.2|+|1.0|+|.9|+|1.0|+|.5| = 4.5 -> 4.5 / 6 = 0.75
# Has0 (>= 0): truth T T F T F T, pred T F T T F T -> agree at 0,3,4,5 -> 4/6
#   weighted F1: class 1 (support 4): TP 3 (0,3,5), FP 1 (2), FN 1 (1) -> F1 3/4
#                class 0 (support 2): TP 1 (4), FP 1 (1), FN 1 (2)     -> F1 1/2
#                (4 * 3/4 + 2 * 1/2) / 6 = 4/6
# Non0: drop idx 1 -> truth > 0: T F T F T, pred > 0: T T T F F (0.0 is not > 0) -> agree at 0,2,3 -> 3/5
#   weighted F1: class 1 (support 3): TP 2, FP 1, FN 1 -> 2/3; class 0 (support 2): TP 1, FP 1, FN 1 -> 1/2
#                (3 * 2/3 + 2 * 1/2) / 5 = 3/5
# Acc7 (clip +-3, banker's round): truth 2.5->2, 0->0, -0.5->-0, 1.5->2, -2.5->-2, 0.5->0
#                                  pred  1.6->2, -0.2->-0, 0.5->0, 2.4->2, -3.5->-3->-3, 0.0->0
#   agree everywhere except idx 4 (-2 vs -3) -> 5/6   (half-away-from-zero rounding would give 2/6)
# Acc5 (clip +-2): truth 2.5->2->2, -2.5->-2->-2; pred 2.4->2, -3.5->-2 -> all agree -> 1.0
Y_TRUE = np.array([2.5, 0.0, -0.5, 1.5, -2.5, 0.5])
Y_PRED = np.array([1.6, -0.2, 0.5, 2.4, -3.5, 0.0])
GOLDEN = {
    "MAE": 0.75,
    "Acc2_has0": 4 / 6,
    "F1_has0": 4 / 6,
    "Acc2_non0": 3 / 5,
    "F1_non0": 3 / 5,
    "Acc5": 1.0,
    "Acc7": 5 / 6,
}


def test_regression_golden() -> None:
    out = M.regression_metrics(y_true=Y_TRUE, y_pred=Y_PRED)
    assert list(out) == list(M.REGRESSION_KEYS)
    for key, value in GOLDEN.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert out["Corr"] == pytest.approx(np.corrcoef(Y_PRED, Y_TRUE)[0, 1], abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize(
    ("fn", "key"),
    [
        (M.mae, "MAE"),
        (M.acc2_has0, "Acc2_has0"),
        (M.f1_has0, "F1_has0"),
        (M.acc2_non0, "Acc2_non0"),
        (M.f1_non0, "F1_non0"),
        (M.acc5, "Acc5"),
        (M.acc7, "Acc7"),
    ],
)
def test_single_functions_match_golden(fn, key) -> None:
    assert fn(y_true=Y_TRUE, y_pred=Y_PRED) == pytest.approx(GOLDEN[key], abs=1e-12)


def test_inputs_are_flattened() -> None:
    a = M.regression_metrics(y_true=Y_TRUE.reshape(6, 1), y_pred=Y_PRED.reshape(1, 6))
    b = M.regression_metrics(y_true=Y_TRUE, y_pred=Y_PRED)
    assert a == b


def test_bankers_rounding_ties() -> None:
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2, -0.5 -> -0 (== 0)
    y_true = np.array([0.5, 1.5, 2.5, -2.5, -0.5])
    assert M.acc7(y_true=y_true, y_pred=np.array([0.0, 2.0, 2.0, -2.0, 0.0])) == 1.0
    # half-away-from-zero answers all disagree
    assert M.acc7(y_true=y_true, y_pred=np.array([1.0, 1.0, 3.0, -3.0, -1.0])) == 0.0
    # Acc5 clips 2.6 to 2 before rounding; Acc7 keeps 2.6 -> 3
    assert M.acc5(y_true=np.array([2.0]), y_pred=np.array([2.6])) == 1.0
    assert M.acc7(y_true=np.array([2.0]), y_pred=np.array([2.6])) == 0.0


def test_weighted_f1_argument_order() -> None:
    # truth 1 1 1 1 0 0, pred 1 1 1 1 1 0
    # class 1: TP 4, FP 1, FN 0 -> P 4/5, R 1   -> F1 8/9;  class 0: TP 1, FP 0, FN 1 -> P 1, R 1/2 -> F1 2/3
    # ours, weights = true supports (4, 2): (4 * 8/9 + 2 * 2/3) / 6 = 22/27
    # swapped, weights = predicted supports (5, 1): (5 * 8/9 + 1 * 2/3) / 6 = 23/27
    y_true = np.array([1.0, 2.0, 0.5, 3.0, -1.0, -2.0])
    y_pred = np.array([0.5, 1.0, 1.0, 2.0, 0.3, -1.0])
    ours = M.f1_has0(y_true=y_true, y_pred=y_pred)
    assert ours == pytest.approx(22 / 27, abs=1e-12)
    assert ours == pytest.approx(f1_score(y_true >= 0, y_pred >= 0, average="weighted"), abs=1e-15)
    swapped = f1_score(y_pred >= 0, y_true >= 0, average="weighted")
    assert swapped == pytest.approx(23 / 27, abs=1e-12)
    assert abs(ours - swapped) > 1e-3
    # no zero labels here, so Non0 equals Has0
    assert M.f1_non0(y_true=y_true, y_pred=y_pred) == pytest.approx(22 / 27, abs=1e-12)


def test_corr_golden_values() -> None:
    # deviations t: -1.5 -.5 .5 1.5, p: -1.5 .5 -.5 1.5 -> cov 4, var 5 and 5 -> r = 0.8
    assert M.corr(y_true=np.array([1, 2, 3, 4]), y_pred=np.array([1, 3, 2, 4])) == pytest.approx(0.8, abs=1e-12)
    assert M.corr(y_true=np.array([1, 2, 3]), y_pred=np.array([2, 4, 6])) == pytest.approx(1.0, abs=1e-12)
    assert M.corr(y_true=np.array([1, 2, 3]), y_pred=np.array([3, 2, 1])) == pytest.approx(-1.0, abs=1e-12)


def test_constant_predictor_corr_is_zero_and_json_valid() -> None:
    y_true = np.array([-1.0, 0.5, 2.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from np.corrcoef
        assert M.corr(y_true=y_true, y_pred=np.full(4, 0.1)) == 0.0
        assert M.corr(y_true=np.full(4, 0.1), y_pred=y_true) == 0.0
        assert M.corr(y_true=np.array([1.0]), y_pred=np.array([2.0])) == 0.0
        out = M.regression_metrics(y_true=y_true, y_pred=np.full(4, 0.1))
    json.dumps(out, allow_nan=False)
    assert out["Corr"] == 0.0


def test_non0_on_all_zero_labels_is_zero() -> None:
    y_true = np.zeros(4)
    y_pred = np.array([0.3, -0.1, 0.0, 1.0])
    assert M.acc2_non0(y_true=y_true, y_pred=y_pred) == 0.0
    assert M.f1_non0(y_true=y_true, y_pred=y_pred) == 0.0
    out = M.regression_metrics(y_true=y_true, y_pred=y_pred)
    json.dumps(out, allow_nan=False)
    # Has0 still counts every sample: truth all >= 0, pred >= 0 at 0, 2, 3 -> 3/4
    assert out["Acc2_has0"] == pytest.approx(0.75)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="values"):
        M.mae(y_true=np.zeros(3), y_pred=np.zeros(4))
    with pytest.raises(ValueError, match="zero samples"):
        M.mae(y_true=np.zeros(0), y_pred=np.zeros(0))
    with pytest.raises(ValueError, match="y_pred"):
        M.regression_metrics(y_true=np.zeros(2), y_pred=np.array([0.0, np.nan]))
    with pytest.raises(TypeError):
        M.mae(Y_TRUE, Y_PRED)  # type: ignore[misc]  # keyword-only


# ---------------------------------------------------------------------------------- parity with MMSA formulas


def _mmsa_mosei_regression(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """MMSA metricsTop.__eval_mosei_regression, written out straightforwardly (unrounded)."""
    test_preds = y_pred.reshape(-1)
    test_truth = y_true.reshape(-1)

    def multiclass_acc(preds, truths):
        return np.sum(np.round(preds) == np.round(truths)) / float(len(truths))

    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0])
    non_zeros_binary_truth = test_truth[non_zeros] > 0
    non_zeros_binary_preds = test_preds[non_zeros] > 0
    binary_truth = test_truth >= 0
    binary_preds = test_preds >= 0
    return {
        "Has0_acc_2": accuracy_score(binary_preds, binary_truth),
        "Has0_F1_score": f1_score(binary_truth, binary_preds, average="weighted"),
        "Non0_acc_2": accuracy_score(non_zeros_binary_preds, non_zeros_binary_truth),
        "Non0_F1_score": f1_score(non_zeros_binary_truth, non_zeros_binary_preds, average="weighted"),
        "Mult_acc_5": multiclass_acc(np.clip(test_preds, -2.0, 2.0), np.clip(test_truth, -2.0, 2.0)),
        "Mult_acc_7": multiclass_acc(np.clip(test_preds, -3.0, 3.0), np.clip(test_truth, -3.0, 3.0)),
        "MAE": np.mean(np.absolute(test_preds - test_truth)),
        "Corr": np.corrcoef(test_preds, test_truth)[0][1],
    }


_MMSA_TO_OURS = {
    "Has0_acc_2": "Acc2_has0",
    "Has0_F1_score": "F1_has0",
    "Non0_acc_2": "Acc2_non0",
    "Non0_F1_score": "F1_non0",
    "Mult_acc_5": "Acc5",
    "Mult_acc_7": "Acc7",
    "MAE": "MAE",
    "Corr": "Corr",
}


@pytest.mark.parametrize("seed", range(8))
def test_parity_with_mmsa_regression(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y_true = rng.integers(-6, 7, size=n) / 2.0  # half steps: zero labels and .5 ties
    y_pred = rng.normal(0.0, 1.8, size=n)
    y_pred[: n // 3] = np.round(y_pred[: n // 3] * 2) / 2  # ties in predictions too
    y_pred[:2] = 0.0
    ours = M.regression_metrics(y_true=y_true, y_pred=y_pred)
    ref = _mmsa_mosei_regression(y_pred, y_true)
    for mmsa_key, key in _MMSA_TO_OURS.items():
        assert ours[key] == pytest.approx(float(ref[mmsa_key]), abs=1e-12), key


def _mmsa_sims_regression(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """MMSA metricsTop.__eval_sims_regression, written out straightforwardly."""
    test_preds = np.clip(y_pred.reshape(-1), a_min=-1.0, a_max=1.0)
    test_truth = np.clip(y_true.reshape(-1), a_min=-1.0, a_max=1.0)

    def binned(values, edges):
        out = values.copy()
        for i in range(len(edges) - 1):
            out[np.logical_and(values > edges[i], values <= edges[i + 1])] = i
        return out

    def multiclass_acc(preds, truths):
        return np.sum(np.round(preds) == np.round(truths)) / float(len(truths))

    ms_2, ms_3, ms_5 = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01], [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, t2 = binned(test_preds, ms_2), binned(test_truth, ms_2)
    return {
        "Mult_acc_2": multiclass_acc(p2, t2),
        "Mult_acc_3": multiclass_acc(binned(test_preds, ms_3), binned(test_truth, ms_3)),
        "Mult_acc_5": multiclass_acc(binned(test_preds, ms_5), binned(test_truth, ms_5)),
        "F1_score": f1_score(t2, p2, average="weighted"),
        "MAE": np.mean(np.absolute(test_preds - test_truth)),
        "Corr": np.corrcoef(test_preds, test_truth)[0][1],
    }


@pytest.mark.parametrize("seed", range(8))
def test_parity_with_mmsa_sims(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 200))
    y_true = rng.choice([-1.0, -0.8, -0.7, -0.6, -0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.6, 0.7, 0.8, 1.0], size=n)
    y_pred = rng.normal(0.0, 0.7, size=n)
    y_pred[: n // 4] = rng.choice([-0.7, -0.1, 0.0, 0.1, 0.7], size=n // 4)  # values on bin edges
    ours = M.sims_metrics(y_true=y_true, y_pred=y_pred)
    ref = _mmsa_sims_regression(y_pred, y_true)
    assert list(ours) == list(M.SIMS_KEYS)
    for key in M.SIMS_KEYS:
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


def test_sims_golden() -> None:
    # clipped truth: -1 -.5 0 .05 .1 .5 .8 1      clipped pred: -.8 0 .2 -.1 .1 .7 1 .9
    # a2 ([-1,0] | (0,1]):   truth 0 0 0 1 1 1 1 1, pred 0 0 1 0 1 1 1 1 -> 6/8
    #   F1: class 1 (5): TP 4, FP 1, FN 1 -> 4/5; class 0 (3): TP 2, FP 1, FN 1 -> 2/3 -> (4 + 2) / 8 = 0.75
    # a3 edges -.1, .1:      truth 0 0 1 1 1 2 2 2, pred 0 1 2 0 1 2 2 2 -> 5/8
    # a5 edges -.7 -.1 .1 .7: truth 0 1 2 2 2 3 4 4, pred 0 2 3 1 2 3 4 4 -> 5/8
    # MAE (clipped): .2 + .5 + .2 + .15 + 0 + .2 + .2 + .1 = 1.55 -> 0.19375
    y_true = np.array([-1.5, -0.5, 0.0, 0.05, 0.1, 0.5, 0.8, 1.2])
    y_pred = np.array([-0.8, 0.0, 0.2, -0.1, 0.1, 0.7, 1.5, 0.9])
    out = M.sims_metrics(y_true=y_true, y_pred=y_pred)
    assert out["Mult_acc_2"] == pytest.approx(0.75)
    assert out["Mult_acc_3"] == pytest.approx(5 / 8)
    assert out["Mult_acc_5"] == pytest.approx(5 / 8)
    assert out["F1_score"] == pytest.approx(0.75)
    assert out["MAE"] == pytest.approx(0.19375)


# --------------------------------------------------------------------------------------------------- IEMOCAP


def test_emotion_golden() -> None:
    # Neutral: truth 1 0 1 0, pred 1 1 1 0 -> acc 3/4
    #   class 1 (2): TP 2, FP 1, FN 0 -> P 2/3, R 1 -> 4/5; class 0 (2): TP 1, FP 0, FN 1 -> P 1, R 1/2 -> 2/3
    #   weighted (2 * 4/5 + 2 * 2/3) / 4 = 11/15
    # Happy: truth 0 0 1 1, pred 0 0 1 1 -> acc 1, F1 1
    y_true = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    y_pred = np.array([[1, 0], [1, 0], [1, 1], [0, 1]])
    out = M.emotion_metrics(y_true=y_true, y_pred=y_pred, names=("Neutral", "Happy"))
    assert list(out) == ["Neutral_Acc", "Neutral_F1", "Happy_Acc", "Happy_F1", "Mean_Acc", "Mean_F1"]
    assert out["Neutral_Acc"] == pytest.approx(0.75)
    assert out["Neutral_F1"] == pytest.approx(11 / 15)
    assert out["Happy_Acc"] == 1.0
    assert out["Happy_F1"] == 1.0
    assert out["Mean_Acc"] == pytest.approx(0.875)
    assert out["Mean_F1"] == pytest.approx(13 / 15)


def test_emotion_parity_with_mult() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(60, 4, 2))
    truth = rng.integers(0, 2, size=(60, 4))
    out = M.emotion_metrics(y_true=truth, y_pred=logits.argmax(-1), names=IEMOCAP_EMOTIONS)
    for k, name in enumerate(IEMOCAP_EMOTIONS):  # MulT eval_iemocap
        pred_k = np.argmax(logits[:, k], axis=1)
        assert out[f"{name}_F1"] == pytest.approx(f1_score(truth[:, k], pred_k, average="weighted"), abs=1e-12)
        assert out[f"{name}_Acc"] == pytest.approx(accuracy_score(truth[:, k], pred_k), abs=1e-12)


def test_emotion_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="names"):
        M.emotion_metrics(y_true=np.zeros((3, 2)), y_pred=np.zeros((3, 2)), names=("a",))
    with pytest.raises(ValueError, match="binary"):
        M.emotion_metrics(y_true=np.zeros((3, 1)), y_pred=np.full((3, 1), 2), names=("a",))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        M.emotion_metrics(y_true=np.zeros((3, 2, 2)), y_pred=np.zeros((3, 2, 2)), names=("a", "b"))


# ------------------------------------------------------------------------------------------------ robustness

RATES = tuple(round(0.1 * i, 1) for i in range(11))


def test_auc_flat_and_linear() -> None:
    assert M.robustness_auc(rates=RATES, values=[0.7] * 11) == pytest.approx(0.7, abs=1e-12)
    assert M.robustness_auc(rates=[0.2, 0.5, 0.6], values=[0.3, 0.3, 0.3]) == pytest.approx(0.3, abs=1e-12)
    # linear 1 - r on [0, 1]: area 1/2, range 1
    assert M.robustness_auc(rates=RATES, values=[1 - r for r in RATES]) == pytest.approx(0.5, abs=1e-12)
    # trapezoids are exact on a line even with uneven steps: v = r on [0, 1]
    assert M.robustness_auc(rates=[0.0, 0.2, 0.5, 1.0], values=[0.0, 0.2, 0.5, 1.0]) == pytest.approx(0.5)
    # v = r on [0.2, 0.6]: area (0.2 + 0.6) / 2 * 0.4 = 0.16, range 0.4 -> 0.4
    assert M.robustness_auc(rates=[0.2, 0.6], values=[0.2, 0.6]) == pytest.approx(0.4)


def test_auc_relation_to_emt_dlfr() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 0.9, size=11)
    emt = sum((values[k] + values[k + 1]) / 2 * 0.1 for k in range(10))  # EMT-DLFR, step 0.1
    assert M.robustness_auc(rates=RATES, values=values) == pytest.approx(emt, abs=1e-12)
    lnln = values[:10]  # a 0.0 ... 0.9 sweep
    emt_09 = sum((lnln[k] + lnln[k + 1]) / 2 * 0.1 for k in range(9))
    assert M.robustness_auc(rates=RATES[:10], values=lnln) * 0.9 == pytest.approx(emt_09, abs=1e-12)


def test_auc_invalid() -> None:
    with pytest.raises(ValueError, match="increasing"):
        M.robustness_auc(rates=[0.0, 0.2, 0.1], values=[1, 1, 1])
    with pytest.raises(ValueError, match="two"):
        M.robustness_auc(rates=[0.0], values=[1.0])
    with pytest.raises(ValueError):
        M.robustness_auc(rates=[0.0, 1.0], values=[1.0, math.nan])


def test_robustness_mean() -> None:
    assert M.robustness_mean(values=[0.5, 0.7, 0.9]) == pytest.approx(0.7)
