"""instruction: Flan-style instruction tuning on a mixture of sources, each in its own format."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, NonNegativeInt, model_validator

from finetune.specs.base import TaskSpecBase, parse_templates
from finetune.specs.seq2seq import GENERATING_FAMILIES


class InstructionSpec(TaskSpecBase):
    """instruction: Flan-style instruction tuning on a mixture of sources (data.mixture), each in its own format;
    the loss on the assistant's turns only, judged per held-out task on what the model generates."""

    type: Literal["instruction"] = Field(description="instruction")
    templates: list[str] | None = Field(
        None,
        description="Phrasings of the prompt, one drawn per example (seeded); alpaca rows fill {instruction} and "
        "{input}, natural_instructions tasks {definition}, {examples} and {input}. Default: built-in phrasings per "
        "format.",
    )
    shots: NonNegativeInt = Field(
        0,
        description="Exemplars shown before each prompt (k-shot): a natural_instructions task's positive examples, "
        "or other training rows of the same source (never its held_out rows).",
    )
    chat_template: bool | None = Field(
        None,
        description="Decoders: render conversations with the tokenizer's own chat template; default (null) uses it "
        "when the tokenizer has one.",
    )

    predicts: ClassVar[str] = "text"
    default_metrics: ClassVar[tuple[str, ...]] = ("rougeL", "exact_match")  # Super-NaturalInstructions' own
    families: ClassVar[frozenset[str]] = GENERATING_FAMILIES
    task_class: ClassVar[str] = "instruction:Instruction"
    pipeline_tag: ClassVar[str] = "text2text-generation"
    reads_mixture: ClassVar[bool] = True
    packs: ClassVar[bool] = True
    key_hints: ClassVar[dict[str, str]] = {
        key: "its fields come from each source's format in data.mixture"
        for key in ("text_a", "text_b", "prompt_template", "references", "prefix", "labels", "verbalizer", "label")
    }

    @model_validator(mode="after")
    def _templates_parse(self) -> InstructionSpec:
        parse_templates(*[("templates", template) for template in self.templates or []])
        return self
