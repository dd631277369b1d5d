"""Task types, one module each: how examples are formatted, labelled, scored and decoded."""

from finetune.recipe.schema import TaskSpec
from finetune.tasks.base import Task
from finetune.tasks.classification import Classification
from finetune.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {"classification": Classification, "regression": Regression}


def build_task(spec: TaskSpec, labels: list[str] | None) -> Task:
    """The task object for a recipe's task section; `labels` are the class names (classification)."""
    return TASKS[spec.type](spec, labels)


__all__ = ["TASKS", "Task", "build_task"]
