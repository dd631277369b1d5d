"""multiple_choice: the right answer among a row's candidates (GPT-1's softmax over each candidate's score)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from finetune.errors import FinetuneError
from finetune.fields import answer_index, field_or_none, fill_template, get_field, template_fields
from finetune.specs.base import PredictorSpec, parse_templates, template_keys


class MultipleChoiceSpec(PredictorSpec):
    """multiple_choice: a context and k candidates, each scored as `[start] context [delim] candidate [extract]`;
    the label names the right candidate (by its name, A, or its index). Rows may have different numbers of
    candidates."""

    type: Literal["multiple_choice"] = Field(description="multiple_choice")
    context: str | None = Field(None, description="Column holding the context or question.")
    context_template: str | None = Field(
        None,
        description="The context built from the row instead, e.g. '{premise} What was the {question}?'; fields in "
        "braces, nested ones as {question[stem]}.",
    )
    choices: list[str] | str = Field(
        description="A list of columns, one per candidate ([choice1, choice2]), or one column holding a list of "
        "candidates (question.choices)."
    )
    choice_text: str | None = Field(None, description="Key of the text inside each candidate, when they are records.")
    choice_label: str | None = Field(
        None, description="Key of each candidate's name (A, B, ...) that the label column names."
    )
    truncate_field: str | None = Field(
        None,
        description="A field of task.context_template shortened first when the input is too long (e.g. article), "
        "so that the others (the question) stay whole; task.truncate says which part of it is cut.",
    )
    label_base: Literal[0, 1] = Field(
        0,
        description="What an integer label counts from: 0 (the first candidate is 0) or 1 (1-based answer keys). "
        "A letter A, B, ... names the first, second, ... candidate when candidates have no names.",
    )

    predicts: ClassVar[str] = "candidate"
    default_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    task_class: ClassVar[str] = "multiple_choice:MultipleChoice"
    pipeline_tag: ClassVar[str] = "multiple-choice"
    key_hints: ClassVar[dict[str, str]] = {
        "text_a": "it reads task.context (or task.context_template) and task.choices",
        "labels": "its labels name the right candidate; there is no class list",
    }

    @model_validator(mode="after")
    def _one_context(self) -> MultipleChoiceSpec:
        if (self.context is None) == (self.context_template is None):
            raise ValueError("task.context: multiple_choice needs exactly one of task.context or task.context_template")
        if isinstance(self.choices, list) and (self.choice_text or self.choice_label):
            raise ValueError("task.choice_text: applies when task.choices names one column holding a list")
        parse_templates(("context_template", self.context_template))
        if self.truncate_field is not None:
            fields = template_fields(self.context_template) if self.context_template else []
            if self.truncate_field not in fields:
                raise ValueError(
                    f"task.truncate_field: {self.truncate_field!r} is not a field of task.context_template "
                    f"({', '.join(fields) or 'no template'})"
                )
        return self

    def fields(self, role: str = "train") -> dict[str, str]:
        found = {} if role == "input" else {"task.label": self.label}
        if self.context is not None:
            found["task.context"] = self.context
        found.update(template_keys(self.context_template, "task.context_template"))
        choices = [self.choices] if isinstance(self.choices, str) else self.choices
        found.update({f"task.choices[{i}]": column for i, column in enumerate(choices)})
        return found

    def context_of(self, row: dict[str, Any]) -> str:
        """The context column, or the template filled from the row."""
        if self.context is not None:
            return str(get_field(row, self.context))
        return fill_template(self.context_template, row, "task.context_template")

    def candidates_of(self, row: dict[str, Any]) -> tuple[list[str], list[str] | None]:
        """The candidate texts of one row and, when candidates carry names (A, B, ...), those names."""
        if isinstance(self.choices, list):
            return [str(get_field(row, column)) for column in self.choices], None
        items = get_field(row, self.choices)
        if isinstance(items, dict):  # a record of lists, as the Hub stores them: {"text": [...], "label": [...]}
            items = [dict(zip(items, values)) for values in zip(*items.values())]
        if not isinstance(items, list):
            raise FinetuneError(f"task.choices: {self.choices} holds {type(items).__name__}, not a list of candidates")
        if not items:
            raise FinetuneError(f"task.choices: {self.choices} is an empty list in a row; a question needs candidates")
        if not isinstance(items[0], dict):
            return [str(item) for item in items], None
        keys = ", ".join(items[0])
        if self.choice_text not in items[0]:
            raise FinetuneError(f"task.choice_text: candidates are records with keys {keys}; name the text")
        if self.choice_label is not None and self.choice_label not in items[0]:
            raise FinetuneError(f"task.choice_label: candidates are records with keys {keys}; no {self.choice_label!r}")
        texts = [str(item[self.choice_text]) for item in items]
        names = [str(item[self.choice_label]) for item in items] if self.choice_label else None
        return texts, names

    def read_label(self, value: Any, row: dict[str, Any], labels: list[str] | None) -> int | None:
        texts, names = self.candidates_of(row)
        return answer_index(value, names, len(texts), self.label_base)

    def label_expectation(self, labels: list[str] | None) -> str:
        counted = "from 1" if self.label_base else "from 0"
        return f"not one of the row's candidates (by name, letter or index counted {counted})"

    def check_rows(self, split: str, role: str, rows: list[dict], labels: list[str] | None) -> tuple[list, list]:
        problems, notes = super().check_rows(split, role, rows, labels)
        if self.label_base == 0 and (span := self._one_based_span(rows)):
            problems.insert(
                0,
                f"task.label: the integer answers in split {split!r} run from 1 to {span}, with "
                f"{span} naming the last candidate: they count from 1; set task.label_base: 1",
            )
        return problems, notes

    def _one_based_span(self, rows: list[dict]) -> int | None:
        """K when the integer labels run 1..K on rows of K candidates (none is 0, some equals its row's count)."""
        answers = []
        for row in rows:
            value = str(field_or_none(row, self.label)).strip()
            if not value.isdigit():
                return None
            answers.append((int(value), len(self.candidates_of(row)[0])))
        if not answers or min(a for a, _ in answers) < 1 or not any(a == k for a, k in answers):
            return None
        return max(k for _, k in answers)
