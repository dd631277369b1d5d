"""Task types, one module each: how examples are formatted, labelled, run, scored and decoded."""

from transformers import PreTrainedTokenizerBase

from finetune.recipe.schema import Recipe, TaskSpec
from finetune.tasks.base import Task
from finetune.tasks.classification import Classification
from finetune.tasks.instruction import Instruction
from finetune.tasks.multiple_choice import MultipleChoice
from finetune.tasks.regression import Regression
from finetune.tasks.seq2seq import Seq2Seq
from finetune.tasks.similarity import Similarity
from finetune.tasks.text_to_text import TextToText

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "entailment": Classification,  # an ordered pair: the pair encoding keeps premise and hypothesis apart
    "regression": Regression,
    "similarity": Similarity,
    "multiple_choice": MultipleChoice,
    "seq2seq": Seq2Seq,
    "instruction": Instruction,
}


def build_task(
    spec: TaskSpec,
    labels: list[str] | None = None,
    family: str = "encoder",
    *,
    max_target_length: int | None = None,
    packing: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Task:
    """The task object for a task section, whole (the arguments as `Task` takes them). A text_to_text head (T5)
    formats every task type as source and target texts instead."""
    kind = TextToText if spec.head == "text_to_text" else TASKS[spec.type]
    return kind(spec, labels, family, max_target_length=max_target_length, packing=packing, tokenizer=tokenizer)


def prepare_task(
    recipe: Recipe, labels: list[str] | None, family: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> Task:
    """The recipe's task for a checkpoint of `family`, with the tokenizer made ready for it (GPT-1's tokens for a
    decoder's task head, a pad token for generation)."""
    packing = recipe.data.packing is True  # "auto" is settled with the architecture
    return build_task(
        recipe.task,
        labels,
        family,
        max_target_length=recipe.data.max_target_length,
        packing=packing,
        tokenizer=tokenizer,
    )


__all__ = ["TASKS", "Instruction", "Seq2Seq", "Task", "TextToText", "build_task", "prepare_task"]
