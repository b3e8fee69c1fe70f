"""The task loss alone: MSE for sentiment regression, per-emotion binary cross-entropy for IEMOCAP."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hrlf.objectives.base import Objective
from hrlf.types import Batch, ModelOutput, TaskSpec


def task_loss(pred: Tensor, label: Tensor, task: TaskSpec) -> Tensor:
    """MSE on (B,) scores (HRLF uses MSE for MOSI/MOSEI), or CE on (B, K, 2) logits vs (B, K) {0,1} targets."""
    if task.kind == "regression":
        return F.mse_loss(pred, label)
    return F.cross_entropy(pred.reshape(-1, 2), label.reshape(-1))  # (B, K, 2) -> (B*K, 2)


class TaskObjective(Objective):
    """``{"loss": task, "task": task}``."""

    def __init__(self, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        loss = task_loss(output.pred, batch.label, self.task)
        return {"loss": loss, "task": loss}
