"""Loss objects: ``objective(output, batch) -> {"loss": total, <term>: ...}``; weights are typed arguments."""

from hrlf.objectives.base import Objective
from hrlf.objectives.task import TaskObjective, task_loss

__all__ = ["Objective", "TaskObjective", "task_loss"]
