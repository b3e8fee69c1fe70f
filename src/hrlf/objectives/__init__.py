"""Former home of the training systems: each method's now lives in its model file, the base in
:mod:`hrlf.engine.system`; these names are re-exported from there."""

from hrlf.objectives.base import Objective
from hrlf.objectives.task import TaskObjective, task_loss

__all__ = ["Objective", "TaskObjective", "task_loss"]
