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
* :meth:`setup`, :meth:`prepare`, :meth:`start_epoch`, :meth:`end_epoch`, :meth:`optimizers` and
  :meth:`schedulers` are the remaining hooks, with defaults that fit a single network trained by one Adam.

The task loss shared by every method is :func:`task_loss`; :class:`TaskSystem` trains with it alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrlf.types import Batch, ModelOutput, TaskSpec

if TYPE_CHECKING:
    from hrlf.config import TrainCfg
    from hrlf.data.datamodule import DataModule

log = logging.getLogger(__name__)

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

    def prepare(self, data: DataModule, *, cfg: TrainCfg, device: torch.device) -> None:
        """Called by the trainer after :meth:`setup` and the optimizers, before the first epoch of every session
        (also a resumed one), with the stage's data: precompute what does not change while the stage trains
        (:class:`DistillationSystem`: the frozen teacher's outputs). Nothing by default."""

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
    """The task loss alone: ``{"loss": task, "task": task}``; for regression MSE (``regression="mse"``) or L1
    (``"l1"``, :func:`regression_or_task_loss`)."""

    def __init__(self, *, task: TaskSpec, regression: str = "mse") -> None:
        super().__init__()
        if regression not in ("mse", "l1"):
            raise ValueError(f"regression: expected mse | l1, found {regression!r}")
        self.task = task
        self.regression = regression

    def losses(
        self, output: ModelOutput, batch: Batch, *, clean: Batch | None = None, teacher: ModelOutput | None = None
    ) -> dict[str, Tensor]:
        del clean, teacher  # unused here; part of the losses() signature every system shares
        loss = regression_or_task_loss(output.pred, batch.label, self.task, regression=self.regression)
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

    def prepare(self, data: DataModule, *, cfg: TrainCfg, device: torch.device) -> None:
        """With ``train.cache_teacher``: the teacher's output on every clean training clip, computed once here
        (:class:`TeacherCache`)."""
        super().prepare(data, cfg=cfg, device=device)
        self.__dict__["_teacher_cache"] = None
        if cfg.cache_teacher:
            self.__dict__["_teacher_cache"] = TeacherCache.build(
                self.teacher, data, batch_size=cfg.eval_batch_size, device=device
            )

    def teacher_output(self, clean: Batch) -> ModelOutput:
        """The frozen teacher's output on the clean batch: from the cache when :meth:`prepare` built one and it
        holds these clips, else computed."""
        cache: TeacherCache | None = self.__dict__.get("_teacher_cache")
        if cache is not None:
            cached = cache.lookup(clean)
            if cached is not None:
                return cached
        with torch.no_grad():
            return self.teacher(clean)


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor inside a model output (dataclasses, dicts, lists and tuples of them), in a fixed order."""
    if isinstance(obj, Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if not f.init:  # dataclasses.replace cannot set it: such an output is not rebuilt from a cache
                raise ValueError(f"{type(obj).__name__}.{f.name} is not an __init__ field")
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


def _replace_tensors(obj: Any, new: Iterator[Tensor]) -> Any:
    """``obj`` with its tensors (in :func:`_tensors` order) replaced by the next ones of ``new``."""
    if isinstance(obj, Tensor):
        return next(new)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _replace_tensors(getattr(obj, f.name), new) for f in dataclasses.fields(obj) if f.init}
        )
    if isinstance(obj, dict):
        return {key: _replace_tensors(value, new) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_replace_tensors(value, new) for value in obj)
    return obj


class TeacherCache:
    """A frozen teacher's outputs on every clip of the training split, computed once per stage session.

    A distillation student's step runs the teacher on the clean batch, the same clips every epoch and a fixed
    network in evaluation mode: the same output each time (a fifth of HRLF's student step on MOSEI). The cache
    runs it once over the split, in file order and batches of ``train.eval_batch_size``, and a step gathers its
    clips' rows instead. The values are those of the teacher on those clips; computed in another batch they can
    differ in the last float digits (batch-dependent kernel blocking, ~4e-7 on MOSI), and since the cache is
    filled the same way in every session, a resumed stage gets the same values as an uninterrupted one.
    ``train.cache_teacher: false`` computes the teacher in every step instead.

    Only outputs whose every tensor has one row per clip and the same trailing shape in every batch can be
    cached (per-frame outputs over a batch-dependent span cannot); :meth:`build` returns None for others, and
    for caches above :data:`TeacherCache.MAX_BYTES`.
    """

    MAX_BYTES: ClassVar[int] = 2 * 1024**3

    def __init__(self, template: ModelOutput, rows: list[Tensor], ids: list[str]) -> None:
        self.template, self.rows, self.ids = template, rows, ids

    @classmethod
    def build(
        cls, teacher: nn.Module, data: DataModule, *, batch_size: int, device: torch.device
    ) -> TeacherCache | None:
        template: ModelOutput | None = None
        parts: list[list[Tensor]] = []
        ids: list[str] = []
        was_training = teacher.training
        teacher.eval()
        try:
            with torch.no_grad():
                for batch in data.batches("train", batch_size=batch_size):
                    out = teacher(batch.to(device))
                    try:
                        tensors = list(_tensors(out))
                    except ValueError as exc:
                        log.info("teacher output cannot be rebuilt (%s): computed in every step, not cached", exc)
                        return None
                    shapes_ok = all(t.dim() >= 1 and t.shape[0] == batch.size for t in tensors)
                    if template is not None:
                        shapes_ok = shapes_ok and [t.shape[1:] for t in tensors] == [t.shape[1:] for t in parts[0]]
                    if not shapes_ok:
                        log.info("teacher output has a per-batch shape: computed in every step, not cached")
                        return None
                    template = template if template is not None else out
                    parts.append([t.detach() for t in tensors])
                    ids.extend(batch.ids)
        finally:
            teacher.train(was_training)
        if template is None:
            return None
        rows = [torch.cat(column) for column in zip(*parts, strict=True)]  # per tensor (N, ...)
        size = sum(r.numel() * r.element_size() for r in rows)
        if size > cls.MAX_BYTES:
            log.info("teacher cache would hold %.1f GB: computed in every step, not cached", size / 1024**3)
            return None
        log.debug("teacher outputs cached: %d clips, %.1f MB", len(ids), size / 1024**2)
        return cls(template, rows, ids)

    def lookup(self, clean: Batch) -> ModelOutput | None:
        """The cached output for ``clean``'s clips (rows of the training split, checked by id), or None when they
        are not all there (another split, another file)."""
        index = clean.index
        if index.numel() == 0 or int(index.max()) >= len(self.ids) or int(index.min()) < 0:
            return None
        if clean.ids and [self.ids[i] for i in index.tolist()] != list(clean.ids):
            return None
        index = index.to(self.rows[0].device)
        return _replace_tensors(self.template, iter([r.index_select(0, index) for r in self.rows]))
