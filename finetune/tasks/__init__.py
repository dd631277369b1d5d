"""Task types, one module each: how examples are formatted, labelled, run, scored and decoded."""

import importlib

from transformers import PreTrainedTokenizerBase

from finetune.recipe.schema import Recipe
from finetune.specs import TaskSpec
from finetune.tasks.base import Task
from finetune.tasks.instruction import Instruction
from finetune.tasks.seq2seq import Seq2Seq
from finetune.tasks.text_to_text import TextToText


def task_class(spec: TaskSpec) -> type[Task]:
    """The torch half of a task type, as its spec names it; a text_to_text head (T5) formats every task type as
    source and target texts instead."""
    if spec.text_to_text:
        return TextToText
    module, name = spec.task_class.split(":")
    return getattr(importlib.import_module(f"finetune.tasks.{module}"), name)


def build_task(
    spec: TaskSpec,
    labels: list[str] | None = None,
    family: str = "encoder",
    *,
    max_target_length: int | None = None,
    packing: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Task:
    """The task object for a task section, whole (the arguments as `Task` takes them)."""
    return task_class(spec)(
        spec, labels, family, max_target_length=max_target_length, packing=packing, tokenizer=tokenizer
    )


def prepare_task(
    recipe: Recipe, labels: list[str] | None, family: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> Task:
    """The recipe's task for a checkpoint of `family`, with the tokenizer made ready for it (GPT-1's tokens for a
    decoder's task head, a pad token for generation)."""
    packing = recipe.data.max_length if recipe.data.packing is True else 0  # "auto" is settled with the architecture
    return build_task(
        recipe.task,
        labels,
        family,
        max_target_length=recipe.data.max_target_length,
        packing=packing,
        tokenizer=tokenizer,
    )


__all__ = ["Instruction", "Seq2Seq", "Task", "TextToText", "build_task", "prepare_task", "task_class"]
