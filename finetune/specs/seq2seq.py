"""seq2seq: the model writes a target text for a source, judged by text metrics on what it generates."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from finetune.fields import fill_template, get_field, texts_of
from finetune.specs.base import TaskSpecBase, parse_templates, template_keys

GENERATING_FAMILIES = frozenset({"decoder", "encoder-decoder"})


class Seq2SeqSpec(TaskSpecBase):
    """seq2seq: a source text to a target text (summaries, translations), on decoders and encoder-decoders."""

    type: Literal["seq2seq"] = Field(description="seq2seq")
    text_a: str | None = Field(None, description="Column holding the source text.")
    prompt_template: str | None = Field(
        None,
        description="The source built from the row instead of task.text_a, e.g. 'Dialogue:\\n{dialogue}\\nSummary:'.",
    )
    label: str = Field(
        "label", description="Column holding the target text (a column holding a list of targets trains on each)."
    )
    references: list[str] | str | None = Field(
        None,
        description="The evaluation split's reference outputs, columns ([summary1, summary2]) or one column holding "
        "a list; generated text is judged against each (the best match counts). Default: task.label.",
    )
    prefix: str | None = Field(None, description="T5's task prefix, written before the source (summarize: ...).")

    predicts: ClassVar[str] = "text"
    default_metrics: ClassVar[tuple[str, ...]] = ("rougeL", "rouge1", "rouge2")
    families: ClassVar[frozenset[str]] = GENERATING_FAMILIES
    task_class: ClassVar[str] = "seq2seq:Seq2Seq"
    pipeline_tag: ClassVar[str] = "text2text-generation"
    packs: ClassVar[bool] = True
    key_hints: ClassVar[dict[str, str]] = {
        "text_b": "combine columns with task.prompt_template",
        "labels": "a text target has no class list",
        "verbalizer": "a text target has no class words",
        "aux_lm_weight": "the loss already is the language-modelling loss on the target",
        "head": "it generates with the model's own language-modelling head",
    }

    @model_validator(mode="after")
    def _one_source(self) -> Seq2SeqSpec:
        if (self.text_a is None) == (self.prompt_template is None):
            raise ValueError("task.text_a: seq2seq needs exactly one of task.text_a or task.prompt_template (source)")
        parse_templates(("prompt_template", self.prompt_template))
        return self

    @property
    def reference_fields(self) -> list[str]:
        """The evaluation split's reference columns (one may hold a list)."""
        refs = self.references or self.label
        return [refs] if isinstance(refs, str) else list(refs)

    def fields(self, role: str = "train") -> dict[str, str]:
        found = {"task.text_a": self.text_a} if self.text_a else {}
        found.update(template_keys(self.prompt_template, "task.prompt_template"))
        if role == "train":
            found["task.label"] = self.label
        elif role == "eval":
            refs = self.reference_fields
            found.update({f"task.references[{i}]" if self.references else "task.label": p for i, p in enumerate(refs)})
        return found

    def source_of(self, row: dict[str, Any]) -> str:
        """The source: the prefix (T5's task prefix), then the source column or the filled template."""
        if self.text_a:
            text = str(get_field(row, self.text_a))
        else:
            text = fill_template(self.prompt_template, row, "task.prompt_template")
        return f"{self.prefix.strip()} {text}" if self.prefix else text

    def references_of(self, row: dict[str, Any]) -> list[str]:
        """An evaluation row's reference outputs, from every reference column (a column may hold a list)."""
        return [text for path in self.reference_fields for text in texts_of(get_field(row, path))]

    def family_problems(self, family: str, model_name: str, max_length: int, max_target_length: int) -> list[str]:
        if family == "decoder" and max_target_length >= max_length:
            return [
                f"data.max_target_length: a decoder reads prompt and target as one sequence of data.max_length "
                f"({max_length}) tokens; make the target limit ({max_target_length}) smaller"
            ]
        return []

    def check_rows(self, split: str, role: str, rows: list[dict], labels: list[str] | None) -> tuple[list, list]:
        """Rows with an empty source or target (references, in the eval split) are skipped; say how many."""
        empty = 0
        for row in rows:
            targets = self.references_of(row) if role == "eval" else texts_of(get_field(row, self.label))
            if not self.source_of(row).strip() or not any(t.strip() for t in targets):
                empty += 1
        what = "an empty source or no reference" if role == "eval" else "an empty source or target"
        if empty == len(rows):
            return [f"task.label: every row of split {split!r} has {what}; nothing to learn or judge"], []
        if empty:
            return [], [f"task.label: {empty} of {len(rows)} rows of split {split!r} have {what}; skipped"]
        return [], []
