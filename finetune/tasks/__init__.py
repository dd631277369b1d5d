"""Task types, one module each: how examples are formatted, labelled, run, scored and decoded."""

from finetune.recipe.schema import TaskSpec
from finetune.tasks.base import Task
from finetune.tasks.classification import Classification
from finetune.tasks.multiple_choice import MultipleChoice
from finetune.tasks.regression import Regression
from finetune.tasks.similarity import Similarity
from finetune.tasks.text_to_text import TextToText

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "entailment": Classification,  # an ordered pair: the pair encoding keeps premise and hypothesis apart
    "regression": Regression,
    "similarity": Similarity,
    "multiple_choice": MultipleChoice,
}


def build_task(spec: TaskSpec, labels: list[str] | None) -> Task:
    """The task object for a recipe's task section; `labels` are the class names when it predicts classes.
    A text_to_text head (T5) formats every task type as source and target texts instead."""
    if spec.head == "text_to_text":
        return TextToText(spec, labels)
    return TASKS[spec.type](spec, labels)


__all__ = ["TASKS", "Task", "TextToText", "build_task"]
