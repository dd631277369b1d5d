"""The schema of `data.transforms` and `data.split`: reshaping rows as they arrive into the columns a task reads,
declared in the recipe (no Python, no eval) and validated like every other option.

Each transform is a mapping of one key, its kind: `- rename: {label_text: label}`. `finetune.transforms` applies
them; this module only declares them, and stays as cheap to import as the rest of the schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from finetune.specs.base import Section

Scalar = str | int | float | bool | None
TRANSFORM_ERROR = "transform"  # pydantic's error type for an entry that names no transform


class Rename(Section):
    """Rename columns."""

    rename: dict[str, str] = Field(description="{old: new}, e.g. {sentence: text}.", min_length=1)


class Select(Section):
    """Keep only these columns, in this order."""

    select: list[str] = Field(description="The columns kept, e.g. [text, label].", min_length=1)


class Drop(Section):
    """Remove columns."""

    drop: list[str] = Field(description="The columns removed.", min_length=1)


class JoinSpec(Section):
    """A column read from a text file with one line per row of the split (labels shipped apart from the data)."""

    column: str = Field(description="The new column's name; it must not exist yet (drop it first).")
    files: dict[str, str] = Field(
        description="The side file of each split, by split name, e.g. {validation: valid-labels.lst}; line N "
        "belongs to row N of the split as read.",
        min_length=1,
    )


class Join(Section):
    """Add a column from a line-aligned side file."""

    join: JoinSpec = Field(description="The column and its files by split.")


class MapSpec(Section):
    """Replace a column's values through a table."""

    column: str = Field(description="The column whose values are mapped.")
    values: dict[str | int | float | bool, Scalar] = Field(
        description='{from: to}, e.g. {"1": 0, "2": 1}; a number and its text match alike (1 and "1").', min_length=1
    )
    unmapped: Literal["error", "keep"] = Field("error", description="A value missing from the table: error or keep.")
    into: str | None = Field(None, description="Write the result to this column; default the column itself.")


class Map(Section):
    """Map values through a table."""

    map: MapSpec = Field(description="The column and its table.")


class AnswerSpec(Section):
    """An answer key turned into the 0-based position of the candidate it names."""

    column: str = Field(description="The answer column.")
    style: Literal["letter", "one_based", "zero_based"] | None = Field(
        None, description="letter: A, B, ... name the first, second, ...; one_based: 1..K; zero_based: 0..K-1."
    )
    names: str | None = Field(
        None,
        description="Instead of style: the column (a dotted path such as choices.label) listing each row's candidate "
        "names; the answer is the position of its name there.",
    )
    into: str | None = Field(None, description="Write the position to this column; default the column itself.")

    @model_validator(mode="after")
    def _one_reading(self) -> AnswerSpec:
        if (self.style is None) == (self.names is None):
            raise ValueError(
                f"data.transforms (answer): give exactly one of style (letter, one_based, zero_based) or names "
                f"(the column of candidate names) for {self.column}"
            )
        return self


class Answer(Section):
    """Turn a letter, 1-based or named answer into a candidate's position."""

    answer: AnswerSpec = Field(description="The answer column and how it names a candidate.")


class SplitTextSpec(Section):
    """One string cut into a list at every match of a regular expression."""

    column: str = Field(description="The column holding the string, e.g. options: '(A) red (B) blue'.")
    pattern: str = Field(
        description=r"The separator, a Python regular expression; one group captures each item's name, e.g. "
        r"'\(([A-E])\)\s*'."
    )
    into: str | None = Field(None, description="The list column written; default the column itself.")
    names: str | None = Field(None, description="The column written with the captured names (the pattern's group).")
    prefix: str | None = Field(
        None,
        description="The column written with any text before the first separator; without it, such text is an error.",
    )

    @model_validator(mode="after")
    def _pattern_compiles(self) -> SplitTextSpec:
        try:
            groups = re.compile(self.pattern).groups
        except re.error as exc:
            raise ValueError(
                f"data.transforms (split_text): pattern {self.pattern!r} is not a regular expression ({exc})"
            ) from None
        if groups > 1:
            raise ValueError(
                f"data.transforms (split_text): pattern {self.pattern!r} has {groups} groups; one "
                "captures the names (use (?:...) for the others)"
            )
        if (self.names is not None or self.prefix is not None) and groups == 0:
            key = "names" if self.names is not None else "prefix"
            raise ValueError(f"data.transforms (split_text): {key} needs a group in the pattern (the item names)")
        return self


class SplitText(Section):
    """Split a string into a list column."""

    split_text: SplitTextSpec = Field(description="The column, the separator and the columns written.")


class Explode(Section):
    """One row per item of list columns: an article with three questions becomes three rows, the article repeated."""

    explode: list[str] = Field(
        description="The list columns exploded together (each row's lists are of one length).", min_length=1
    )


FilterOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "empty", "not empty"]


class FilterSpec(Section):
    """Keep the rows meeting one condition."""

    column: str = Field(description="The column tested (a dotted path reads inside records).")
    op: FilterOp = Field(description="The test; empty means null, missing, blank text or an empty list.")
    value: Scalar | list[Scalar] = Field(None, description="What the column is compared with; a list for in.")

    @model_validator(mode="after")
    def _value_fits(self) -> FilterSpec:
        listed = isinstance(self.value, list)
        if self.op in ("in", "not in") and not listed:
            raise ValueError(f"data.transforms (filter): op {self.op!r} needs a list value, e.g. [a, b]")
        if self.op in ("empty", "not empty") and self.value is not None:
            raise ValueError(f"data.transforms (filter): op {self.op!r} takes no value")
        if self.op not in ("in", "not in", "empty", "not empty") and (listed or self.value is None):
            raise ValueError(f"data.transforms (filter): op {self.op!r} needs one value")
        return self


class Filter(Section):
    """Keep the rows meeting a condition."""

    filter: FilterSpec = Field(description="The condition.")


class CastSpec(Section):
    """Values converted to text or numbers; a list's items each converted."""

    columns: list[str] = Field(description="The columns converted.", min_length=1)
    to: Literal["text", "int", "float"] = Field(description="text (numbers that belong as text), int or float.")


class Cast(Section):
    """Convert values to text or numbers."""

    cast: CastSpec = Field(description="The columns and the type.")


TRANSFORMS: dict[str, type[Section]] = {
    "rename": Rename,
    "select": Select,
    "drop": Drop,
    "join": Join,
    "map": Map,
    "answer": Answer,
    "split_text": SplitText,
    "explode": Explode,
    "filter": Filter,
    "cast": Cast,
}


def transform_kind(value: Any) -> str | None:
    """A transform's kind: its one key (or its class's one field, once validated)."""
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 and next(iter(value)) in TRANSFORMS else None
    fields = getattr(type(value), "model_fields", {})
    return next((kind for kind in TRANSFORMS if kind in fields), None)


Transform = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in TRANSFORMS.items())],  # noqa: UP007
    Discriminator(transform_kind, custom_error_type=TRANSFORM_ERROR, custom_error_message="not a transform"),
]


class SplitSpec(Section):
    """Training and evaluation parts drawn from one labelled split."""

    model_config = ConfigDict(**Section.model_config, serialize_by_alias=True)

    source: str = Field(alias="from", description="The split divided, e.g. validation.")
    eval_share: float = Field(gt=0, lt=1, description="The share of its rows held out for evaluation, e.g. 0.2.")
    seed: int = Field(0, description="The draw's seed; kept apart from train.seed, so seeds share one held-out part.")
