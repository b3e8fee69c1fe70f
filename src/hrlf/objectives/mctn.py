"""MCTN's coupled translation-prediction objective (weights from the official Keras code, hainow/MCTN).

``loss = w_t MSE(X^_T1, X_T1) + w_c MSE(X^_S, X_S) + w_t2 MSE(X^_T2, X_T2) + w_p L_pred + l2 ||W_out||^2``;
see :mod:`hrlf.models.mctn` for the model and every deviation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.models.mctn import MCTN
from hrlf.objectives.base import Objective
from hrlf.objectives.task import task_loss
from hrlf.types import Batch, Modality, ModelOutput, TaskSpec


def translation_loss(pred: Tensor, truth: Tensor, frames: Tensor) -> Tensor:
    """MSE over the counted frames (B, L) and every feature dim of (B, L, D) sequences; 0 when none counts."""
    weight = frames.unsqueeze(-1).to(pred.dtype)  # (B, L, 1)
    squared = (pred - truth).pow(2) * weight  # (B, L, D)
    return squared.sum() / (weight.sum() * pred.shape[-1]).clamp_min(1.0)


class MCTNObjective(Objective):
    """Translation (forward, cycle, second level) + prediction + the output layer's L2 penalty, every term logged."""

    def __init__(
        self,
        *,
        task: TaskSpec,
        source: Modality = "language",
        target1: Modality = "vision",
        target2: Modality = "audio",
        weight_translation: float = 0.1,
        weight_cycle: float = 0.1,
        weight_translation2: float = 0.1,
        weight_prediction: float = 1.0,
        prediction_loss: str = "l1",
        l2_factor: float = 0.01,
    ) -> None:
        super().__init__()
        if prediction_loss not in ("l1", "mse"):
            raise ValueError(f"prediction_loss must be l1 or mse, got {prediction_loss!r}")
        self.task = task
        self.source, self.target1, self.target2 = source, target1, target2
        self.weights = {
            "translation": weight_translation,
            "cycle": weight_cycle,
            "translation2": weight_translation2,
            "task": weight_prediction,
        }
        self.prediction_loss = prediction_loss
        self.l2_factor = l2_factor
        self._model: tuple[MCTN, ...] = ()  # held outside the module tree (its parameters are the model's)

    def setup(self, model: nn.Module) -> None:
        if not isinstance(model, MCTN):
            raise TypeError(f"MCTNObjective trains an MCTN model, got {type(model).__name__}")
        self._model = (model,)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if not self._model:
            raise RuntimeError("call setup(model) before computing MCTN's losses (the L2 term reads its weights)")
        aux = output.aux
        if self.task.kind == "regression" and self.prediction_loss == "l1":
            prediction = F.l1_loss(output.pred, batch.label)
        else:
            prediction = task_loss(output.pred, batch.label, self.task)
        terms: dict[str, Tensor] = {"task": prediction}
        pairs = {"translation": (self.target1, "translation"), "translation2": (self.target2, "translation")}
        if f"cycle.{self.source}" in aux:
            pairs["cycle"] = (self.source, "cycle")
        for name, (m, kind) in pairs.items():
            terms[name] = translation_loss(aux[f"{kind}.{m}"], aux[f"truth.{m}"], aux[f"frames.{m}"])
        terms["l2"] = self.l2_factor * self._model[0].regressor.out.weight.pow(2).sum()
        terms["loss"] = (
            sum((self.weights[k] * terms[k] for k in self.weights if k in terms), torch.zeros(())) + terms["l2"]
        )
        return terms
