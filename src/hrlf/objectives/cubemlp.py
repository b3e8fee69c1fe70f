"""CubeMLP's objective: the task loss alone (Sun et al., ACM MM 2022; model file :mod:`hrlf.models.cubemlp`).

The authors' code trains MOSI/MOSEI regression with an L1 (MAE) loss by default; ``regression_loss="mse"`` gives
the harness's MSE instead. Emotions use the per-emotion two-way cross-entropy of :func:`hrlf.objectives.task_loss`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hrlf.objectives.base import Objective
from hrlf.objectives.task import task_loss
from hrlf.types import Batch, ModelOutput, TaskSpec

REGRESSION_LOSSES = ("l1", "mse")


class CubeMLPObjective(Objective):
    """``{"loss": task, "task": task}`` with an L1 or MSE regression loss."""

    def __init__(self, *, task: TaskSpec, regression_loss: str = "l1") -> None:
        super().__init__()
        if regression_loss not in REGRESSION_LOSSES:
            raise ValueError(f"regression_loss must be one of {REGRESSION_LOSSES}, got {regression_loss!r}")
        self.task = task
        self.regression_loss = regression_loss

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if self.task.kind == "regression" and self.regression_loss == "l1":
            loss = F.l1_loss(output.pred, batch.label)
        else:
            loss = task_loss(output.pred, batch.label, self.task)
        return {"loss": loss, "task": loss}
