"""TransModality's objective: prediction loss + forward and backward translation losses (arXiv 2009.02902).

``L = L_task + lambda_forward * mean_cells L_forward + lambda_backward * mean_cells L_backward``, where each
translation loss is the mean squared (or absolute) error per feature between a decoder's output and the target
modality's sequence, over the target's real frames. See :mod:`hrlf.models.transm` for every choice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hrlf.objectives.base import Objective
from hrlf.objectives.task import task_loss
from hrlf.types import Batch, ModelOutput, TaskSpec

DIRECTIONS = ("forward", "backward")


def translation_error(translation: Tensor, target: Tensor, mask: Tensor, *, kind: str) -> Tensor:
    """Mean per-feature error over the frames where ``mask`` is True (0 when there are none).

    Args:
        translation: (B, T, D) decoder output.
        target: (B, T, D) target features.
        mask: (B, T) bool, frames that count.
        kind: ``mse`` (squared error) or ``l1`` (absolute error).
    """
    diff = translation - target  # (B, T, D)
    per_frame = (diff.pow(2) if kind == "mse" else diff.abs()).mean(dim=-1)  # (B, T, D) -> (B, T)
    weights = mask.to(per_frame.dtype)
    return (per_frame * weights).sum() / weights.sum().clamp_min(1.0)


class TransMObjective(Objective):
    """Prediction loss plus the translation losses of every fusion cell, each term logged."""

    def __init__(
        self,
        *,
        task: TaskSpec,
        lambda_forward: float = 1.0,
        lambda_backward: float = 1.0,
        translation_loss: str = "mse",
        translation_target: str = "clean",
    ) -> None:
        super().__init__()
        if translation_loss not in ("mse", "l1"):
            raise ValueError(f"translation_loss must be mse or l1, got {translation_loss!r}")
        if translation_target not in ("clean", "input"):
            raise ValueError(f"translation_target must be clean or input, got {translation_target!r}")
        self.task = task
        self.weights = {"forward": lambda_forward, "backward": lambda_backward}
        self.translation_loss = translation_loss
        self.translation_target = translation_target

    def losses(self, output: ModelOutput, batch: Batch, clean: Batch) -> dict[str, Tensor]:
        """All terms: ``task``, ``trans_forward``, ``trans_backward``, one ``trans.<src>_to_<tgt>`` per
        translation, and the weighted total ``loss``.

        Args:
            output: the model's output on ``batch``.
            batch: the model's input (after the training protocol).
            clean: the same samples before the protocol (translation targets under ``translation_target=clean``).
        """
        terms: dict[str, Tensor] = {"task": task_loss(output.pred, batch.label, self.task)}
        per_direction: dict[str, list[Tensor]] = {d: [] for d in DIRECTIONS}
        for key, translation in output.aux.items():
            if not key.startswith("translation."):
                continue
            _, direction, pair = key.split(".")
            target_modality = pair.split("_to_")[1]
            if self.translation_target == "clean":
                # every real frame of the complete sequence: the translation must restore what was removed
                target, mask = clean.features[target_modality], clean.valid[target_modality]
            else:
                target, mask = batch.features[target_modality], batch.present(target_modality)
            target = target * mask.unsqueeze(-1).to(target.dtype)  # (B, T, D): zero vectors off the mask
            error = translation_error(translation, target, mask, kind=self.translation_loss)
            terms[f"trans.{pair}"] = error
            per_direction[direction].append(error)
        total = terms["task"]
        for direction, errors in per_direction.items():
            if errors:
                terms[f"trans_{direction}"] = torch.stack(errors).mean()
                total = total + self.weights[direction] * terms[f"trans_{direction}"]
        terms["loss"] = total
        return terms

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """The full objective with ``batch`` as its own clean reference (no protocol applied)."""
        return self.losses(output, batch, batch)

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
        terms = self.losses(model(batch), batch, clean)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        return {k: float(v.detach()) for k, v in terms.items()}
