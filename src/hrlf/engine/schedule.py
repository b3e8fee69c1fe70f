"""Per-step learning-rate schedules of single parameter groups (a fine-tuned text encoder's warm-up and decay).

Epoch-level schedules of a whole optimizer are :meth:`hrlf.engine.system.System.schedulers`. A parameter group
that carries the key ``step_schedule`` (``{"base_lr", "warmup", "decay"}``, written by
:func:`hrlf.models.text_encoder.parameter_groups`) instead gets its ``lr`` set by the trainer before every
training step from the step's index in the stage: a pure function of (step, planned steps), so a resumed stage
continues the same schedule without saved scheduler state.

The schedule is the one of BERT fine-tuning (``get_linear_schedule_with_warmup`` in the field's code, e.g.
MAG-BERT): the lr rises linearly over the first ``warmup`` fraction of the planned steps (``train.epochs`` times
the batches per epoch), then stays (``constant``) or falls linearly to 0 at the last planned step (``linear``).
A stage that stops early ends before the decay reaches 0. For a model whose batches hold whole videos (GCNet)
the batches per epoch vary with the shuffle, and the planned count is ``ceil(clips / batch_size)``: its decay can
reach 0 a few steps early (the factor stays at 0) or end a few steps above it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["apply_step_schedules", "step_lr_factor"]


def step_lr_factor(step: int, total: int, *, warmup: float, decay: str) -> float:
    """The multiplier of the base lr at 0-based ``step`` of ``total`` planned steps."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if decay == "linear":
        return max(0.0, (total - step) / max(1, total - warm))
    return 1.0


def apply_step_schedules(optimizers: Mapping[str, torch.optim.Optimizer], *, step: int, total: int) -> None:
    """Set the lr of every parameter group that has a ``step_schedule`` for training step ``step`` of ``total``."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            schedule = group.get("step_schedule")
            if schedule:
                factor = step_lr_factor(step, total, warmup=schedule["warmup"], decay=schedule["decay"])
                group["lr"] = schedule["base_lr"] * factor
