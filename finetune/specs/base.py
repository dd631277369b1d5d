"""What every task type's spec shares: the recipe section base, metric names, and the traits the rest of the
package asks a spec instead of switching on `task.type`.

Torch-free, and free of the rest of the recipe schema (which imports the specs): `finetune validate` runs on it.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, model_validator

from finetune.errors import FinetuneError
from finetune.fields import field_or_none, get_field, template_fields

MetricName = Literal[
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearson",
    "spearman",
    "rouge1",
    "rouge2",
    "rougeL",
    "rougeLsum",
    "bleu",
    "chrf",
    "exact_match",
    "perplexity",
]
SCORE_METRICS = ("pearson", "spearman")
TEXT_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match")
CLASS_METRICS = ("accuracy", "f1", "matthews_correlation")
FAMILY_ORDER = ("encoder", "decoder", "encoder-decoder")
ALL_FAMILIES = frozenset(FAMILY_ORDER)


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, numbers are finite, values are frozen once
    validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TaskSpecBase(Section):
    """A task type's recipe section and its traits. Each type is one subclass, registered in `finetune.specs`."""

    type: str = Field(description="The task type; it decides which other task keys exist (one table per type).")
    metrics: list[MetricName] | None = Field(
        None,
        description="Metrics reported at evaluation; the first selects the best checkpoint. Default: the type's own "
        "(above).",
    )

    # traits, declared by each type
    predicts: ClassVar[
        str
    ]  # "classes", "score", "candidate" (among a row's candidates), "text" or "tokens" (a language model)
    default_metrics: ClassVar[tuple[str, ...]]
    families: ClassVar[frozenset[str]] = ALL_FAMILIES  # the architecture families it runs on
    task_class: ClassVar[str]  # "module:Class" under finetune.tasks: the torch half
    pipeline_tag: ClassVar[str] = "text-classification"  # the Hub's name for what the model does
    reads_mixture: ClassVar[bool] = False  # reads data.mixture, not data.source or data.files
    packs: ClassVar[bool] = False  # its examples may be packed per batch on a decoder (data.packing)
    symmetric: ClassVar[bool] = False  # an unordered pair: both orderings are read
    key_hints: ClassVar[dict[str, str]] = {}  # why a key other types read is not this type's

    @model_validator(mode="after")
    def _metrics_fit_the_output(self) -> TaskSpecBase:
        allowed = {"text": TEXT_METRICS, "score": SCORE_METRICS, "tokens": ("perplexity",)}.get(
            self.predicts, CLASS_METRICS
        )
        for name in self.metrics or []:
            if name not in allowed:
                what = {
                    "text": "generated text",
                    "score": "a score",
                    "candidate": "a choice among candidates",
                    "tokens": "a language model",
                }
                raise ValueError(
                    f"task.metrics: {name} does not judge {what.get(self.predicts, 'classes')} (task type "
                    f"{self.type}); use {', '.join(allowed)}"
                )
        return self

    @property
    def generates(self) -> bool:
        """The model writes text, judged by text metrics on what it generates."""
        return self.predicts == "text"

    @property
    def has_classes(self) -> bool:
        """Predicts one of a class list (task.labels, or inferred from the train split)."""
        return self.predicts == "classes"

    @property
    def predicts_score(self) -> bool:
        """A regression head (one number)."""
        return self.predicts == "score"

    @property
    def class_names(self) -> list[str] | None:
        """The recipe's class list (task.labels), where the type has one."""
        return None

    @property
    def text_to_text(self) -> bool:
        """Formatted as source and target texts by a text-to-text head (T5) rather than by its own task module."""
        return False

    @property
    def metric_names(self) -> list[str]:
        """The metrics to report, the recipe's or the task type's default."""
        return list(self.metrics or self.default_metrics)

    def fields(self, role: str = "train") -> dict[str, str]:
        """Recipe key -> the field path it reads, for every field this task needs in every row of a split in `role`:
        "train" and "eval" rows carry labels (or references), "input" rows only the inputs."""
        return {}

    def with_labels(self, labels: list[str]) -> TaskSpecBase:
        """The spec with its class list written out (inferred from the train split, as recipe.yaml records it)."""
        return self.model_copy(update={"labels": labels})

    def settled(self, family: str, model_type: str | None) -> TaskSpecBase:
        """The spec with what `auto` means on this architecture written out (as recipe.yaml records it)."""
        return self

    def family_problems(self, family: str, model_name: str, max_length: int, max_target_length: int) -> list[str]:
        """What this task cannot do on a checkpoint of `family`, beyond the families it runs on."""
        return []

    def head_problems(self, family: str, model_type: str | None, model_name: str) -> list[str]:
        """What this task's head cannot do on this architecture (known once the config is read)."""
        return []

    def path_problems(self) -> list[str]:
        """Local files or folders the task names that do not exist (`finetune validate`)."""
        return []

    def check_rows(self, split: str, role: str, rows: list[dict], labels: list[str] | None) -> tuple[list, list]:
        """(problems, notes) about a split's rows read as this task reads them (`finetune validate`)."""
        return [], []

    def classes_problem(self, labels: list[str]) -> str | None:
        """What does not fit the class list the run will train on (f1 settings, class words); None when it fits."""
        return None


class PredictorSpec(TaskSpecBase):
    """A task with a head that predicts from a label column: classes, a score or a candidate."""

    label: str = Field(
        "label", description="Column holding the label: a class name or id, the target number, or the right answer."
    )
    aux_lm_weight: NonNegativeFloat = Field(
        0.0,
        description="Decoders: weight of the language-modelling loss on the inputs added to the task loss "
        "(GPT-1 used 0.5; 0 turns it off).",
    )
    head: Literal["auto", "classifier", "text_to_text"] = Field(
        "auto",
        description="Encoder-decoders: classifier (the library's classification head, as BART's paper does) or "
        "text_to_text (T5: the model writes the class word, scored among the classes' words); auto picks "
        "text_to_text for T5-style checkpoints, classifier otherwise.",
    )
    prefix: str | None = Field(
        None,
        description="T5's task prefix: the text_to_text head writes it before the fields (rte sentence1: ... "
        "sentence2: ...).",
    )
    truncate: Literal["end", "start", "middle"] = Field(
        "end",
        description="Which part of an input too long for data.max_length is cut: end (a pair's longer text loses its "
        "end, as the tokenizer does), or the first text (a multiple-choice context) loses its start (keeping the "
        "question after a long article) or its middle (keeping both ends); the second text is cut only when the "
        "first cannot give enough.",
    )

    @model_validator(mode="after")
    def _text_to_text_writes_words(self) -> PredictorSpec:
        if self.head == "text_to_text" and self.predicts_score:
            raise ValueError(
                "task.head: text_to_text writes class words, not scores; use task.head: classifier for a score"
            )
        if self.prefix is not None and self.head == "classifier":
            raise ValueError("task.prefix: only the text_to_text head reads a task prefix")
        return self

    @property
    def text_to_text(self) -> bool:
        return self.head == "text_to_text"

    def settled(self, family: str, model_type: str | None) -> PredictorSpec:
        from finetune.families import resolve_head

        return self.model_copy(update={"head": resolve_head(self.head, family, model_type, self.predicts_score)})

    def family_problems(self, family: str, model_name: str, max_length: int, max_target_length: int) -> list[str]:
        if self.aux_lm_weight > 0 and family != "decoder":
            return [f"task.aux_lm_weight: the auxiliary LM loss needs a decoder; {model_name} is {family}"]
        return []

    def head_problems(self, family: str, model_type: str | None, model_name: str) -> list[str]:
        if self.head == "text_to_text" and family != "encoder-decoder":
            return [f"task.head: text_to_text needs an encoder-decoder checkpoint (T5, BART); {model_name} is {family}"]
        if self.prefix is not None and self.settled(family, model_type).head != "text_to_text":
            return [
                f"task.prefix: only the text_to_text head reads a task prefix; {model_name} gets a classifier "
                "(set task.head: text_to_text on an encoder-decoder)"
            ]
        return []

    def read_label(self, value: Any, row: dict[str, Any], labels: list[str] | None) -> int | float | None:
        """The label as the model trains on it (a class id, a number, a candidate's index); None when unreadable.
        The one reader both `finetune validate` and training use."""
        raise NotImplementedError

    def label_expectation(self, labels: list[str] | None) -> str:
        """What an unreadable label is not, for the error line."""
        raise NotImplementedError

    def encode_label(self, row: dict[str, Any], labels: list[str] | None, number: int) -> int | float:
        """The row's label read, or an error naming the row."""
        value = get_field(row, self.label)
        found = self.read_label(value, row, labels)
        if found is None:
            raise FinetuneError(f"task.label: {value!r} in row {number} is {self.label_expectation(labels)}")
        return found

    def path_problems(self) -> list[str]:
        """Local files or folders the task names that do not exist (`finetune validate`)."""
        return []

    def check_rows(self, split: str, role: str, rows: list[dict], labels: list[str] | None) -> tuple[list, list]:
        bad = []
        for number, row in enumerate(rows):
            value = field_or_none(row, self.label)
            if _blank(value) or self.read_label(value, row, labels) is None:
                bad.append((number, value))
        expected = self.label_expectation(labels)
        problems = [
            f"task.label: row {n} of split {split!r} has no label ({self.label} is null, missing or empty)"
            if _blank(v)
            else f"task.label: {v!r} in row {n} of split {split!r} is {expected}"
            for n, v in bad[:REPORTED_ROWS]
        ]
        if len(bad) > REPORTED_ROWS:
            problems.append(f"task.label: {len(bad) - REPORTED_ROWS} more bad labels in split {split!r}")
        return problems, []


REPORTED_ROWS = 3  # bad label values reported per split before the rest are counted


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_templates(*keyed: tuple[str, str | None]) -> None:
    """A ValueError naming the key of the first template (key, template) Python's format cannot parse."""
    for key, template in keyed:
        try:
            list(string.Formatter().parse(template or ""))
        except ValueError as exc:
            raise ValueError(f"task.{key}: {exc} in {template!r}") from None


def template_keys(template: str | None, key: str) -> dict[str, str]:
    """`{"task.prompt_template ({name})": "name"}` for each field a template reads."""
    return {f"{key} ({{{path}}})": path for path in template_fields(template or "", key)}
