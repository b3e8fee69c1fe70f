"""The objective protocol the generic trainer drives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hrlf.types import Batch, ModelOutput

if TYPE_CHECKING:
    from hrlf.config import TrainCfg

#: what :meth:`Objective.schedulers` may return
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


class Objective(nn.Module):
    """Holds a model's training losses (and any auxiliary networks they need, e.g. discriminators).

    Subclasses implement :meth:`forward` returning a dict of named scalar losses including ``"loss"`` (the total
    that is back-propagated). Systems that need alternating updates override :meth:`training_step` and
    :meth:`optimizers`; the default is one Adam over the model's and the objective's trainable parameters and a
    single backward pass.
    """

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, model: nn.Module) -> None:
        """Called by the trainer before the first step of a stage (e.g. to freeze a teacher)."""

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based), also after a resume, so schedules stay exact."""

    def end_epoch(self) -> dict[str, float]:
        """Called by the trainer after each epoch's training steps: named diagnostics of that epoch (e.g. a
        code's across-sample std, an estimator's value), written to ``log.csv`` as ``diag_<name>``."""
        return {}

    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in list(model.parameters()) + list(self.parameters()) if p.requires_grad]
        return {"main": torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Scheduler]:
        """Learning-rate schedules, stepped by the trainer once per epoch after validation (none by default).

        A ``ReduceLROnPlateau`` is stepped with the validation loss, any other scheduler without an argument.
        Their state is saved with the optimizers', so a resumed run continues the same schedule.
        """
        return {}

    def training_step(
        self,
        *,
        model: nn.Module,
        batch: Batch,
        clean: Batch,
        optimizers: dict[str, torch.optim.Optimizer],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        """One update on ``batch`` (the input after the training protocol; ``clean`` is the untouched batch)."""
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        losses = self.forward(model(batch), batch)
        losses["loss"].backward()
        if grad_clip > 0:
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}


class DistillationObjective(Objective):
    """A student stage distilled from a teacher trained by an earlier stage.

    The teacher is held outside the module tree (it is trained and saved by its own stage, never enters an
    optimizer or this objective's state), frozen and put in eval mode by :meth:`setup`; its outputs are computed
    without gradients. ``student_type`` is the network class the student must be.
    """

    student_type: type[nn.Module] = nn.Module

    def __init__(self, *, teacher: nn.Module) -> None:
        super().__init__()
        self._teacher = (teacher,)
        self._student: tuple[nn.Module, ...] = ()

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def setup(self, model: nn.Module) -> None:
        if not isinstance(model, self.student_type):
            raise TypeError(f"{type(self).__name__} trains a {self.student_type.__name__}, got {type(model).__name__}")
        self._student = (model,)
        device = next(model.parameters()).device
        self.teacher.to(device).eval().requires_grad_(False)

    def teacher_output(self, clean: Batch) -> ModelOutput:
        with torch.no_grad():
            return self.teacher(clean)
