"""Mechanism-health diagnostics: pure functions that tell whether an auxiliary mechanism is alive.

A dead mechanism and a useless one look the same in a results table. These numbers tell them apart:

* :func:`across_sample_std` - how much a code varies over the samples of a batch (0 = collapsed to a constant);
* :func:`discriminator_accuracy` - how well a discriminator separates real (teacher) from fake (student) inputs;
* :func:`linear_probe` - how much of the label a frozen code carries (cross-validated linear model);
* :class:`EpochMeter` - per-epoch means of per-step diagnostics, as the trainer writes them to ``log.csv``.

The no-information value of the Jensen-Shannon MI bound (Deep InfoMax, HRLF's Eq. 7) is :data:`JSD_NO_INFORMATION`:
a statistics network that cannot tell matched from shuffled pairs is best off constant at 0, where the bound is
``-softplus(0) - softplus(0) = -2 log 2``; the bound's maximum is 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: the JSD bound of a statistics network that carries no information (a constant 0 output), in nats
JSD_NO_INFORMATION = -2.0 * math.log(2.0)


def across_sample_std(code: Tensor, weight: Tensor | None = None) -> float:
    """Mean over dimensions of the per-dimension standard deviation across samples of ``code`` (B, d).

    ``weight`` (B,) bool keeps only some rows (e.g. those whose modality is present). Fewer than two rows: 0.
    """
    x = code.detach().float()
    if weight is not None:
        x = x[weight.bool()]
    if x.shape[0] < 2:
        return 0.0
    return float(x.std(dim=0, unbiased=False).mean())


def discriminator_accuracy(real_logits: Tensor, fake_logits: Tensor) -> tuple[float, float]:
    """(accuracy on real inputs, accuracy on fake inputs): the share of logits on the right side of 0."""
    real = float((real_logits.detach() > 0).float().mean())
    fake = float((fake_logits.detach() < 0).float().mean())
    return real, fake


def linear_probe(features: np.ndarray, labels: np.ndarray, *, kind: str, folds: int = 5, seed: int = 0) -> float:
    """How well a linear model predicts ``labels`` from ``features``, by ``folds``-fold cross-validation.

    Regression (labels (N,)): R^2 of the out-of-fold predictions of a ridge regression (0 = no better than the
    mean, 1 = perfect; can be negative). Emotions (labels (N, K) in {0, 1}): balanced accuracy of a logistic
    regression per emotion, averaged over emotions (0.5 = chance, 1 = perfect). Deterministic for a given seed.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import balanced_accuracy_score, r2_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise ValueError(f"features must be (N, d) with N = len(labels), got {x.shape} for {len(labels)} labels")
    if x.shape[0] < 2 * folds:
        raise ValueError(f"a {folds}-fold probe needs at least {2 * folds} samples, got {x.shape[0]}")
    if kind == "regression":
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        pred = cross_val_predict(model, x, y, cv=KFold(folds, shuffle=True, random_state=seed))
        return float(r2_score(y, pred))
    y_all = np.asarray(labels).reshape(len(labels), -1)
    scores = []
    for k in range(y_all.shape[1]):
        y = y_all[:, k].astype(int)
        counts = np.bincount(y, minlength=2)
        if counts.min() < folds:  # too few of one class to stratify: no information to measure
            scores.append(0.5)
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        pred = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        scores.append(float(balanced_accuracy_score(y, pred)))
    return float(np.mean(scores))


class EpochMeter:
    """Running means of named per-step values; :meth:`means` returns them and starts a new epoch."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._counts[name] = self._counts.get(name, 0) + 1

    def update(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.add(name, value)

    def means(self) -> dict[str, float]:
        out = {k: self._sums[k] / self._counts[k] for k in self._sums}
        self._sums, self._counts = {}, {}
        return out


def gradient_norm(loss: Tensor, params: list[torch.nn.Parameter]) -> float:
    """L2 norm of d loss / d params (0 where ``loss`` does not depend on them); keeps the graph."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    total = sum(float(g.detach().pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(total)
