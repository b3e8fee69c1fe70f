"""GCNet's objective: task loss + reconstruction MSE on the missing views only (Lian et al., TPAMI 2023).

``L = L_task + lambda_recon * L_recon`` with, for B utterances and views m of size D_m,

    L_recon = (1 / B) * sum_b sum_m missing[b, m] * (1 / D_m) * ||X^_{b,m} - X_{b,m}||^2,

the authors' ``MaskedReconLoss``: X is the complete utterance vector (from the clean batch), X^ the reconstruction
head's output, and a view counts only where the training masks removed it (present in the clean batch, absent in
the corrupted one). Views that are present, and views absent from the clean data too, add nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hrlf.models.gcnet import GCNet, utterance_features
from hrlf.objectives.base import Objective
from hrlf.objectives.task import task_loss
from hrlf.types import MODALITIES, Batch, ModelOutput, TaskSpec


def missing_view_reconstruction(output: ModelOutput, batch: Batch, clean: Batch) -> Tensor:
    """L_recon: the reconstruction error of the views missing in ``batch`` but present in ``clean``."""
    targets, clean_views = utterance_features(clean)
    total = output.pred.new_zeros(())
    for m in MODALITIES:
        removed = clean_views[m] & ~(output.aux[f"view.{m}"] > 0)  # (B,)
        error = (output.aux[f"recon.{m}"] - targets[m]).pow(2).mean(dim=-1)  # (B, D_m) -> (B,)
        total = total + (error * removed.to(error.dtype)).sum()
    return total / max(batch.size, 1)


class GCNetObjective(Objective):
    """``{"loss", "task", "recon"}``; the reconstruction term needs the clean batch (zero without it)."""

    def __init__(self, *, task: TaskSpec, lambda_recon: float = 1.0) -> None:
        super().__init__()
        self.task = task
        self.lambda_recon = lambda_recon

    def setup(self, model: nn.Module) -> None:
        if not isinstance(model, GCNet):
            raise TypeError(f"GCNetObjective trains a GCNet model, got {type(model).__name__}")

    def forward(self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None) -> dict[str, Tensor]:
        """Task loss on ``batch``; reconstruction loss against ``clean`` on the views missing in ``batch``.

        Without ``clean`` the missing views' targets are unknown, so the reconstruction term is zero.
        """
        terms = {"task": task_loss(output.pred, batch.label, self.task)}
        terms["recon"] = (
            missing_view_reconstruction(output, batch, clean) if clean is not None else output.pred.new_zeros(())
        )
        terms["loss"] = terms["task"] + self.lambda_recon * terms["recon"]
        return terms

    def training_step(
        self,
        *,
        model: nn.Module,
        batch: Batch,
        clean: Batch,
        optimizers: dict[str, torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        terms = self(model(batch), batch, clean=clean)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}
