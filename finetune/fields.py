"""Reading fields out of one raw row: dotted paths into nested records, templates, answers.

Torch-free: `finetune validate` uses the same functions as formatting, so what validates is what runs.
"""

from __future__ import annotations

import string
from typing import Any

from finetune.errors import FinetuneError


def get_field(row: dict[str, Any], path: str) -> Any:
    """`row["question"]["stem"]` for the path `question.stem`; KeyError when a part is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def with_field(row: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `row` with the field at the dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    return {**row, head: with_field(row.get(head) or {}, rest, value) if rest else value}


def field_or_none(row: dict[str, Any], path: str) -> Any:
    """The field at `path`, or None where the row lacks it."""
    try:
        return get_field(row, path)
    except KeyError:
        return None


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


def fill_template(template: str, row: dict[str, Any], key: str) -> str:
    """The template with the row's fields filled in; `key` names the recipe field in the error (a null field is
    one: it would read as the text "None")."""
    try:
        text = template.format_map(row)
    except (KeyError, IndexError, TypeError) as exc:
        raise FinetuneError(f"{key}: the row has no field {exc}") from None
    for path in template_fields(template, key):
        text_field(row, path, key)
    return text


def text_field(row: dict[str, Any], path: str, key: str) -> str:
    """The text at `path`; a row where it is null or missing is an error naming the recipe `key` (never "None")."""
    value = field_or_none(row, path)
    if value is None:
        raise FinetuneError(f"{key}: {path} is null or missing in a row ({_brief(row)})")
    return str(value)


def _brief(row: dict[str, Any]) -> str:
    text = repr(row)
    return text if len(text) <= 80 else text[:77] + "..."


def texts_of(value: Any) -> list[str]:
    """A target or reference field's texts: one string, or each of a list of them."""
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def answer_index(value: Any, names: list[str] | None, count: int, base: int = 0) -> int | None:
    """The right candidate's index: a candidate's name (A); a letter A, B, ... for candidates without names (the
    first, the second, ...); else an integer counted from `base`. None when it is none of these."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if names and text in names:
        return names.index(text)
    if names is None and len(text) == 1 and "A" <= text < chr(ord("A") + min(count, 26)):
        return ord(text) - ord("A")
    if text.lstrip("-").isdigit() and 0 <= int(text) - base < count:
        return int(text) - base
    return None
