"""Task types, torch-free: one spec class per `task.type`, with its own keys, checks and traits. The torch half of
each type is the `finetune.tasks` module its spec names.

Adding a task type: its spec class (here), its `finetune/tasks/` module, one line in `SPECS`, tests and recipes.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from finetune.specs.base import TaskSpecBase
from finetune.specs.distillation import DistillationSpec
from finetune.specs.instruction import InstructionSpec
from finetune.specs.language_modeling import LanguageModelingSpec
from finetune.specs.multiple_choice import MultipleChoiceSpec
from finetune.specs.seq2seq import Seq2SeqSpec
from finetune.specs.texts import ClassificationSpec, EntailmentSpec, RegressionSpec, SimilaritySpec

SPECS: tuple[type[TaskSpecBase], ...] = (
    ClassificationSpec,
    RegressionSpec,
    EntailmentSpec,
    SimilaritySpec,
    MultipleChoiceSpec,
    Seq2SeqSpec,
    InstructionSpec,
    LanguageModelingSpec,
    DistillationSpec,
)
SPEC_BY_TYPE: dict[str, type[TaskSpecBase]] = {spec.model_fields["type"].annotation.__args__[0]: spec for spec in SPECS}
TaskSpec = Annotated[Union[SPECS], Field(discriminator="type")]  # noqa: UP007 (a union built from the tuple)

__all__ = ["SPECS", "SPEC_BY_TYPE", "TaskSpec", "TaskSpecBase"]
