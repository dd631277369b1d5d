"""Reading a task's fields out of one raw row: dotted paths into nested records, templates, candidates.

Torch-free: `finetune validate` uses the same functions as formatting, so what validates is what runs.
"""

from __future__ import annotations

import string
from typing import Any

from finetune.errors import FinetuneError
from finetune.recipe.schema import TaskSpec


def get_field(row: dict[str, Any], path: str) -> Any:
    """`row["question"]["stem"]` for the path `question.stem`; KeyError when a part is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def template_fields(template: str, key: str = "task.context_template") -> list[str]:
    """The row fields a template reads, as dotted paths: '{question[stem]}' reads question.stem."""
    paths = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise FinetuneError(f"{key}: {exc} in {template!r}") from None
    for _, name, _, _ in parsed:
        if name:
            head, *keys = name.replace("]", "").split("[")
            paths.append(".".join([head, *keys]))
    return paths


def task_fields(spec: TaskSpec, role: str = "train") -> dict[str, str]:
    """Recipe key -> the field path it reads, for every field this task needs in every row of a split in `role`:
    "train" and "eval" rows carry labels ("eval" rows of seq2seq its references), "input" rows only the inputs."""
    fields = {"task.text_a": spec.text_a, "task.text_b": spec.text_b}
    if role != "input":
        fields["task.label"] = spec.label
    if spec.generates:
        for path in template_fields(spec.prompt_template or "", "task.prompt_template"):
            fields[f"task.prompt_template ({{{path}}})"] = path
        if role == "eval":
            del fields["task.label"]
            refs = spec.reference_fields
            fields.update({f"task.references[{i}]" if spec.references else "task.label": p for i, p in enumerate(refs)})
    if spec.type == "multiple_choice":
        fields["task.context"] = spec.context
        for path in template_fields(spec.context_template or ""):
            fields[f"task.context_template ({{{path}}})"] = path
        choices = [spec.choices] if isinstance(spec.choices, str) else spec.choices
        fields.update({f"task.choices[{i}]": column for i, column in enumerate(choices)})
    return {key: path for key, path in fields.items() if path}


def fill_template(template: str, row: dict[str, Any], key: str) -> str:
    """The template with the row's fields filled in; `key` names the recipe field in the error."""
    try:
        return template.format_map(row)
    except (KeyError, IndexError, TypeError) as exc:
        raise FinetuneError(f"{key}: the row has no field {exc}") from None


def context_of(row: dict[str, Any], spec: TaskSpec) -> str:
    """The multiple-choice context: the context column, or the template filled from the row."""
    if spec.context is not None:
        return str(get_field(row, spec.context))
    return fill_template(spec.context_template, row, "task.context_template")


def source_of(row: dict[str, Any], spec: TaskSpec) -> str:
    """A seq2seq source: the prefix (T5's task prefix), then the source column or the filled template."""
    text = (
        str(get_field(row, spec.text_a))
        if spec.text_a
        else fill_template(spec.prompt_template, row, "task.prompt_template")
    )
    return f"{spec.prefix.strip()} {text}" if spec.prefix else text


def texts_of(value: Any) -> list[str]:
    """A target or reference field's texts: one string, or each of a list of them."""
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def references_of(row: dict[str, Any], spec: TaskSpec) -> list[str]:
    """A seq2seq evaluation row's reference outputs, from every reference column (a column may hold a list)."""
    return [text for path in spec.reference_fields for text in texts_of(get_field(row, path))]


def candidates_of(row: dict[str, Any], spec: TaskSpec) -> tuple[list[str], list[str] | None]:
    """The candidate texts of one row and, when candidates carry names (A, B, ...), those names."""
    if isinstance(spec.choices, list):
        return [str(get_field(row, column)) for column in spec.choices], None
    items = get_field(row, spec.choices)
    if isinstance(items, dict):  # a record of lists, as the Hub stores them: {"text": [...], "label": [...]}
        items = [dict(zip(items, values)) for values in zip(*items.values())]
    if not isinstance(items, list) or not items:
        raise FinetuneError(f"task.choices: {spec.choices} holds {type(items).__name__}, not a list of candidates")
    if not isinstance(items[0], dict):
        return [str(item) for item in items], None
    if spec.choice_text not in items[0]:
        raise FinetuneError(f"task.choice_text: candidates are records with keys {', '.join(items[0])}; name the text")
    if spec.choice_label is not None and spec.choice_label not in items[0]:
        raise FinetuneError(
            f"task.choice_label: candidates are records with keys {', '.join(items[0])}; no {spec.choice_label!r}"
        )
    texts = [str(item[spec.choice_text]) for item in items]
    names = [str(item[spec.choice_label]) for item in items] if spec.choice_label else None
    return texts, names


def answer_index(value: Any, names: list[str] | None, count: int) -> int | None:
    """The right candidate's index: a candidate name (A), else an integer index; None when it is neither."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if names and text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < count:
        return int(text)
    return None
