"""language_modeling: continued pretraining on raw text, GPT-1's and ULMFiT's first step on the target domain."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveFloat, model_validator

from finetune.fields import field_or_none
from finetune.specs.base import TaskSpecBase

OBJECTIVES = {"decoder": "causal", "encoder": "masked", "encoder-decoder": "span_corruption"}


class LanguageModelingSpec(TaskSpecBase):
    """language_modeling: the checkpoint's own pretraining objective continued on unlabelled text (one document per
    row), so that a later recipe fine-tunes from the run folder (`model: ./runs/<name>/<timestamp>`). Decoders learn
    causal LM on documents cut into blocks of data.max_length (packed per batch without attention across documents);
    encoders masked LM (BERT's 15%, of which 80% [MASK], 10% a random token, 10% kept, through transformers'
    collator); encoder-decoders span corruption (T5's sentinels; BART's text infilling with its mask token when the
    tokenizer has no sentinels). Training draws fresh masks each epoch; evaluation's are drawn once per text, so
    every evaluation scores the same task. Reported: eval_loss and perplexity (its exponential)."""

    type: Literal["language_modeling"] = Field(description="language_modeling")
    text_a: str = Field("text", description="Column holding the raw text, one document per row.")
    objective: Literal["auto", "causal", "masked", "span_corruption"] = Field(
        "auto", description="auto: the family's own (decoder causal, encoder masked, encoder-decoder span_corruption)."
    )
    mask_probability: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="masked: the share of tokens masked; span_corruption: the share in corrupted spans.",
    )
    whole_word_masking: bool = Field(
        False, description="masked: mask every token of a chosen word (each replaced by the mask token)."
    )
    mean_span_length: PositiveFloat = Field(
        3.0, description="span_corruption: mean length of a corrupted span (T5: 3)."
    )

    predicts: ClassVar[str] = "tokens"
    default_metrics: ClassVar[tuple[str, ...]] = ("perplexity",)
    task_class: ClassVar[str] = "language_modeling:LanguageModeling"
    pipeline_tag: ClassVar[str] = "fill-mask"
    packs: ClassVar[bool] = True
    key_hints: ClassVar[dict[str, str]] = {
        key: "it learns from the text itself; there are no labels" for key in ("label", "labels", "text_b")
    }

    @model_validator(mode="after")
    def _options_fit_the_objective(self) -> LanguageModelingSpec:
        if self.whole_word_masking and self.objective not in ("auto", "masked"):
            raise ValueError(f"task.whole_word_masking: only masked LM masks words; the objective is {self.objective}")
        if self.mean_span_length != 3.0 and self.objective not in ("auto", "span_corruption"):
            raise ValueError(
                f"task.mean_span_length: only span corruption has spans; the objective is {self.objective}"
            )
        return self

    def fields(self, role: str = "train") -> dict[str, str]:
        return {"task.text_a": self.text_a}

    def settled(self, family: str, model_type: str | None) -> LanguageModelingSpec:
        return self if self.objective != "auto" else self.model_copy(update={"objective": OBJECTIVES[family]})

    def family_problems(self, family: str, model_name: str, max_length: int, max_target_length: int) -> list[str]:
        problems = []
        if self.objective not in ("auto", OBJECTIVES[family]):
            problems.append(
                f"task.objective: {self.objective} LM trains a {_family_of(self.objective)}; {model_name} is {family}"
            )
        if self.whole_word_masking and family != "encoder":
            problems.append(f"task.whole_word_masking: masks an encoder's inputs; {model_name} is {family}")
        return problems

    def check_rows(self, split: str, role: str, rows: list[dict], labels: list[str] | None) -> tuple[list, list]:
        """Rows without text teach nothing; say how many are skipped."""
        empty = sum(1 for row in rows if not str(field_or_none(row, self.text_a) or "").strip())
        if empty == len(rows):
            return [f"task.text_a: every row of split {split!r} has an empty {self.text_a!r}; nothing to learn"], []
        if empty:
            return [], [f"task.text_a: {empty} of {len(rows)} rows of split {split!r} have no text; skipped"]
        return [], []


def _family_of(objective: str) -> str:
    return next(family for family, own in OBJECTIVES.items() if own == objective)
