"""Former home of the task loss, now :mod:`hrlf.engine.system`; re-exported under the old names."""

from __future__ import annotations

from hrlf.engine.system import TaskSystem, task_loss

#: the task-loss-only system under its former name
TaskObjective = TaskSystem

__all__ = ["TaskObjective", "task_loss"]
