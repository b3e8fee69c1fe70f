"""The base training system: one loss signature and one training step for every method.

A training system holds what a method trains besides its network (Lightning's "system"): the losses, auxiliary
networks (discriminators, statistics networks, graph-distillation units), per-sample training state, optimizers
and learning-rate schedules. The generic trainer (:func:`hrlf.engine.trainer.fit`) drives every system alike:

* :meth:`TrainingSystem.losses` ``(output, batch, *, clean=None, teacher=None) -> {"loss": total, <term>: ...}``
  is the one loss signature. ``output`` is the network's output on ``batch`` (the input after the training
  protocol), ``clean`` the same samples before the protocol removed anything (targets of reconstruction and
  translation losses; ``batch`` itself when None), ``teacher`` a frozen teacher's output on ``clean``
  (distillation stages, :class:`DistillationSystem`). Every term is logged; ``loss`` is back-propagated.
* :meth:`TrainingSystem.training_step` is the one update: zero_grad, forward, :meth:`losses`, backward,
  :meth:`clip_gradients`, step, then the :meth:`after_step` hook (e.g. Self-MM's label update). Only systems
  that need alternating optimizers (HRLF's discriminators) or an inner loop (SMIL's meta-learning) override it.
* :meth:`setup`, :meth:`start_epoch`, :meth:`end_epoch`, :meth:`optimizers` and :meth:`schedulers` are the
  remaining hooks, with defaults that fit a single network trained by one Adam.

The task loss shared by every method is :func:`task_loss`; :class:`TaskSystem` trains with it alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.types import Batch, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg

#: what :meth:`TrainingSystem.schedulers` may return
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def adam(params: Iterable[Any], *, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused update (``fused=True``, one kernel per tensor): torch's default on CPU updates one
    tensor at a time in a dozen operators, 26 of a DMD step's 215 ms (9 fused) and 7 of a backbone step's 150;
    the same update, equal to the default to float rounding (2e-7 after 50 steps)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def task_loss(pred: Tensor, label: Tensor, task: TaskSpec) -> Tensor:
    """MSE on (B,) scores (HRLF uses MSE for MOSI/MOSEI), or CE on (B, K, 2) logits vs (B, K) {0,1} targets."""
    if task.kind == "regression":
        return F.mse_loss(pred, label)
    return F.cross_entropy(pred.reshape(-1, 2), label.reshape(-1))  # (B, K, 2) -> (B*K, 2)


def regression_or_task_loss(pred: Tensor, label: Tensor, task: TaskSpec, *, regression: str) -> Tensor:
    """L1 (``regression="l1"``, the MAE loss of several authors' code) or the task loss (MSE) for regression;
    the task loss (per-emotion cross-entropy) for emotions in either case."""
    if task.kind == "regression" and regression == "l1":
        return F.l1_loss(pred, label)
    return task_loss(pred, label, task)


class TrainingSystem(nn.Module):
    """Holds a network's training losses and whatever else trains with it; see the module docstring.

    Subclasses implement :meth:`losses`. The network is bound by :meth:`setup` and readable as :attr:`network`;
    it is held outside the module tree (a plain reference), so its parameters never count as the system's own
    (no second copy in ``state_dict``, no double entry in an optimizer).
    """

    #: the network class this system trains; :meth:`setup` refuses any other
    network_type: ClassVar[type[nn.Module]] = nn.Module

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        """Every loss term of one step by name, ``loss`` the total that is back-propagated."""
        raise NotImplementedError(f"{type(self).__name__} defines no losses")

    def forward(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        """``system(output, batch, ...)`` is :meth:`losses`."""
        return self.losses(output, batch, clean=clean, teacher=teacher)

    # ------------------------------------------------------------------------------------------------- hooks
    def setup(self, model: nn.Module) -> None:
        """Called by the trainer before the first step of a stage: checks the network's type and binds it."""
        if not isinstance(model, self.network_type):
            raise TypeError(f"{type(self).__name__} trains a {self.network_type.__name__}, got {type(model).__name__}")
        self.__dict__["_network"] = model  # not through nn.Module.__setattr__: no submodule, a reference

    @property
    def network(self) -> nn.Module:
        """The network bound by :meth:`setup`."""
        if "_network" not in self.__dict__:
            raise RuntimeError(f"call {type(self).__name__}.setup(model) first")
        return self.__dict__["_network"]

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based), also after a resume, so schedules stay exact."""

    def end_epoch(self) -> dict[str, float]:
        """Called by the trainer after each epoch's training steps: named diagnostics of that epoch (e.g. a
        code's across-sample std, an estimator's value), written to ``log.csv`` as ``diag_<name>``."""
        return {}

    def optimizers(self, model: nn.Module, cfg: TrainCfg) -> dict[str, torch.optim.Optimizer]:
        """One Adam over the network's and the system's trainable parameters (a fine-tuned text encoder inside
        the network at its own learning rate, :func:`hrlf.models.text_encoder.parameter_groups`)."""
        from hrlf.models.text_encoder import parameter_groups

        params = [p for p in list(model.parameters()) + list(self.parameters()) if p.requires_grad]
        groups = parameter_groups(params, model, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return {"main": adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Scheduler]:  # noqa: ARG002
        """Learning-rate schedules, stepped by the trainer once per epoch after validation (none by default: the
        unused ``optimizers`` is for the overrides that schedule them).

        A ``ReduceLROnPlateau`` is stepped with the validation loss, any other scheduler without an argument.
        Their state is saved with the optimizers', so a resumed run continues the same schedule.
        """
        return {}

    def teacher_output(self, clean: Batch) -> ModelOutput | None:  # noqa: ARG002 - for systems with a teacher
        """The frozen teacher's output on the clean batch, for :meth:`losses` (no teacher: None)."""
        return None

    def clip_gradients(self, params: Sequence[Tensor], grad_clip: float) -> None:
        """Clip the gradients before the step: their total norm to ``grad_clip`` (``train.grad_clip``; 0 = off)."""
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)

    def after_step(self, output: ModelOutput, batch: Batch) -> None:
        """Called after every optimizer step with that step's output (e.g. to update per-sample state)."""

    # -------------------------------------------------------------------------------------------- the step
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
        teacher = self.teacher_output(clean)
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        output = model(batch)
        losses = self.losses(output, batch, clean=clean, teacher=teacher)
        losses["loss"].backward()
        self.clip_gradients([p for group in opt.param_groups for p in group["params"]], grad_clip)
        opt.step()
        self.after_step(output, batch)
        return {k: float(v.detach()) for k, v in losses.items()}


class TaskSystem(TrainingSystem):
    """The task loss alone: ``{"loss": task, "task": task}``."""

    def __init__(self, *, task: TaskSpec) -> None:
        super().__init__()
        self.task = task

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        loss = task_loss(output.pred, batch.label, self.task)
        return {"loss": loss, "task": loss}


class DistillationSystem(TrainingSystem):
    """A student stage distilled from a teacher trained by an earlier stage.

    The teacher is held outside the module tree (it is trained and saved by its own stage and never enters an
    optimizer or this system's state), frozen and put in eval mode by :meth:`setup`; :meth:`teacher_output`
    computes its output on the clean batch without gradients, which the base step passes to :meth:`losses`.
    """

    def __init__(self, *, teacher: nn.Module) -> None:
        super().__init__()
        self.__dict__["_teacher"] = teacher  # a reference, not a submodule (see the class docstring)

    @property
    def teacher(self) -> nn.Module:
        return self.__dict__["_teacher"]

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        device = next(model.parameters()).device
        self.teacher.to(device).eval().requires_grad_(False)

    def teacher_output(self, clean: Batch) -> ModelOutput:
        with torch.no_grad():
            return self.teacher(clean)
