"""Evaluation under the paper's protocols: inter-modality subsets and the intra-modality rate sweep.

The result layout is the ``results.json`` contract::

    {"inter": {"l": {...}, "a": ..., "v": ..., "la": ..., "lv": ..., "av": ..., "lav": ..., "avg": {...}},
     "intra": {"0.0": {...}, ..., "1.0": {...}, "auc": {...}}}

where each ``{...}`` holds the metric keys of :mod:`hrlf.metrics` (fractions, not percentages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from hrlf import metrics
from hrlf.data.datamodule import DataModule
from hrlf.missing.protocol import (
    INTER_CONDITIONS,
    INTRA_RATES,
    MISSING_CONDITIONS,
    EvalMaskBank,
    InterModality,
    IntraModality,
)
from hrlf.types import MODALITIES, Batch, Modality, Split, TaskSpec


class EvalProtocol(Protocol):
    def apply(self, batch: Batch) -> Batch: ...


@torch.no_grad()
def predict(
    model: nn.Module,
    data: DataModule,
    split: Split,
    *,
    protocol: EvalProtocol | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    by_video: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels for a whole split, in file order, under an optional evaluation protocol.

    ``by_video`` packs whole videos into every batch (the model's ``ModelSpec.batches_by_video``).
    """
    was_training = model.training
    model.eval()
    preds, labels, indices = [], [], []
    for batch in data.batches(split, batch_size=batch_size, by_video=by_video):
        if protocol is not None:
            batch = protocol.apply(batch)
        preds.append(model(batch.to(device)).pred.float().cpu())
        labels.append(batch.label)
        indices.append(batch.index)
    model.train(was_training)
    pred, label = torch.cat(preds), torch.cat(labels)
    if by_video:  # back to file order
        index = torch.cat(indices)
        pred, label = (
            torch.empty_like(pred).index_copy_(0, index, pred),
            torch.empty_like(label).index_copy_(0, index, label),
        )
    return pred.numpy(), label.numpy()


def score(pred: np.ndarray, label: np.ndarray, task: TaskSpec) -> dict[str, float]:
    """All metrics of the task: MMSA regression metrics, or per-emotion Acc/F1 from (N, K, 2) logits."""
    if task.kind == "regression":
        return metrics.regression_metrics(y_true=label, y_pred=pred)
    return metrics.emotion_metrics(y_true=label, y_pred=pred.argmax(-1), names=task.label_names)


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def never_present(data: DataModule, split: Split) -> frozenset[Modality]:
    """Modalities with no real frame in any clip of ``split`` and only zero features (the audio and vision of a
    text-only file): removing them changes no input the model sees (models read ``Batch.present``, which is
    False there either way, and the zeroed features are zero already)."""
    part = data.file.splits[split]
    return frozenset(m for m in MODALITIES if not part.valid[m].any() and not np.any(part.features[m]))


def evaluate_protocols(
    model: nn.Module,
    data: DataModule,
    split: Split = "test",
    *,
    which: str = "all",
    mask_seed: int = 0,
    rates: Sequence[float] = INTRA_RATES,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    by_video: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``model`` on ``split`` under the inter and/or intra protocols (``by_video`` as in :func:`predict`).

    Returns:
        The metrics in the ``results.json`` layout and a description of every protocol applied (names and
        parameters, written into results files).
    """
    if which not in ("inter", "intra", "all"):
        raise ValueError(f"protocol must be inter, intra or all, got {which!r}")
    task = data.task
    out: dict[str, Any] = {}
    described: dict[str, Any] = {}
    if which in ("inter", "all"):
        inter: dict[str, dict[str, float]] = {}
        # conditions that differ only in modalities the split never has give the same inputs: computed once
        # (a text-only file: 2 model passes instead of 7)
        absent = never_present(data, split)
        seen: dict[frozenset[Modality], dict[str, float]] = {}
        for cond, available in INTER_CONDITIONS.items():
            protocol = InterModality(available=available)
            key = frozenset(available) - absent
            if key not in seen:
                pred, label = predict(
                    model, data, split, protocol=protocol, batch_size=batch_size, device=device, by_video=by_video
                )
                seen[key] = score(pred, label, task)
            inter[cond] = dict(seen[key])
            described[f"inter.{cond}"] = protocol.describe()
        inter["avg"] = mean_metrics([inter[c] for c in MISSING_CONDITIONS])
        out["inter"] = inter
    if which in ("intra", "all"):
        bank = EvalMaskBank()
        intra: dict[str, dict[str, float]] = {}
        for rate in rates:
            dropped = IntraModality(rate=float(rate), seed=mask_seed, bank=bank)
            pred, label = predict(
                model, data, split, protocol=dropped, batch_size=batch_size, device=device, by_video=by_video
            )
            intra[f"{rate:.1f}"] = score(pred, label, task)
            described[f"intra.{rate:.1f}"] = dropped.describe()
        keys = intra[f"{rates[0]:.1f}"].keys()
        intra["auc"] = {
            k: metrics.robustness_auc(rates=list(rates), values=[intra[f"{r:.1f}"][k] for r in rates]) for k in keys
        }
        out["intra"] = intra
    return out, described
