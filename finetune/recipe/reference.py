"""The recipe reference (docs/recipe.md), generated from the schema so it cannot drift from it."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from finetune.recipe.schema import Recipe
from finetune.recipe.transforms import TRANSFORMS
from finetune.specs import TaskSpecBase
from finetune.specs.base import FAMILY_ORDER

HEADER = """# Recipe reference

Generated from the schema by `finetune recipe --schema` (`make docs`); a test checks it is current.
Every key is optional unless its default says *required*. Unknown keys are errors.
"""


def schema_markdown() -> str:
    """Every recipe option as Markdown tables, one per section (and one per task type)."""
    parts = [HEADER]
    wrappers = set(TRANSFORMS.values())
    for path, model in _sections("", Recipe):
        if model in wrappers and _sections_of(next(iter(model.model_fields.values())).annotation):
            continue  # a transform holding a section: the section's table names it
        kind = model.model_fields["type"].annotation.__args__[0] if issubclass(model, TaskSpecBase) else None
        title = f"`{path}` with `type: {kind}`" if kind else f"`{path or 'top level'}`"
        if path.startswith("data.transforms"):
            name = path.rpartition(".")[2] if model not in wrappers else next(iter(model.model_fields))
            title = f"`data.transforms` entry `- {name}:`"
        parts.append(f"\n## {title}\n\n{_about(model)}\n")
        parts.append("| key | type | default | description |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            if kind and name == "type":
                continue
            key = f"{path}.{field.alias or name}" if path else name
            parts.append(
                f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |"
            )
    return "\n".join(parts) + "\n"


def _about(model: type[BaseModel]) -> str:
    """A section's docstring as one paragraph; a task type's with its default metrics and families."""
    about = " ".join((model.__doc__ or "").split())
    if issubclass(model, TaskSpecBase) and isinstance(model.default_metrics, tuple):
        about += f" Default metrics: {', '.join(model.default_metrics)}."
    if issubclass(model, TaskSpecBase) and isinstance(model.families, frozenset):
        about += f" Runs on {', '.join(f for f in FAMILY_ORDER if f in model.families)} checkpoints."
    return about


def _sections(path: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    found = [(path, model)]
    if issubclass(model, TaskSpecBase):  # a distillation's student is a task section documented by its type
        return found
    for name, field in model.model_fields.items():
        for inner in _sections_of(field.annotation):
            found += _sections(f"{path}.{name}" if path else name, inner)
    return found


def _sections_of(annotation: Any) -> list[type[BaseModel]]:
    """The section classes in an annotation: one, or each of a union's (the task types)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [inner for arg in typing.get_args(annotation) for inner in _sections_of(arg)]


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
        if len(_sections_of(annotation)) > 1:
            return "section, by type"
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
