"""The recipe reference (docs/recipe.md), generated from the schema so it cannot drift from it."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from finetune.recipe.schema import Recipe

HEADER = """# Recipe reference

Generated from the schema by `finetune recipe --schema` (`make docs`); a test checks it is current.
Every key is optional unless its default says *required*. Unknown keys are errors.
"""


def schema_markdown() -> str:
    """Every recipe option as Markdown tables, one per section."""
    parts = [HEADER]
    for path, model in _sections("", Recipe):
        parts.append(f"\n## `{path or 'top level'}`\n\n{(model.__doc__ or '').strip()}\n")
        parts.append("| key | type | default | description |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            parts.append(
                f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |"
            )
    return "\n".join(parts) + "\n"


def _sections(path: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    found = [(path, model)]
    for name, field in model.model_fields.items():
        inner = _section_of(field.annotation)
        if inner is not None:
            found += _sections(f"{path}.{name}" if path else name, inner)
    return found


def _section_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _section_of(arg)
        if inner is not None:
            return inner
    return None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        bounds = {"Gt": ">", "Ge": ">="}
        limits = [
            f" {bounds[type(m).__name__]} {getattr(m, 'gt', getattr(m, 'ge', ''))}"
            for m in annotation.__metadata__
            if type(m).__name__ in bounds
        ]
        return _type_name(args[0]) + "".join(limits)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if args:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "*required*"
    if field.default_factory is not None:
        return "(section defaults)"
    return f"`{field.default}`" if field.default is not None else "`null`"
