"""Former home of the training-system base classes, now :mod:`hrlf.engine.system`; re-exported under their old
names while ``models/hrlf.py`` and the trainer still import them from here."""

from __future__ import annotations

from torch import nn

from hrlf.engine.system import DistillationSystem, Scheduler, TrainingSystem

#: the base training system under its former name
Objective = TrainingSystem


class DistillationObjective(DistillationSystem):
    """:class:`~hrlf.engine.system.DistillationSystem` with the former names: ``student_type`` for
    ``network_type``, ``_student`` for ``(network,)``."""

    student_type: type[nn.Module] = nn.Module

    @property
    def network_type(self) -> type[nn.Module]:  # type: ignore[override]
        return self.student_type

    @property
    def _student(self) -> tuple[nn.Module, ...]:
        return (self.network,) if "_network" in self.__dict__ else ()


__all__ = ["DistillationObjective", "Objective", "Scheduler"]
