"""`data.transforms` applied: rows as they arrive reshaped into the columns a task reads, after reading and before
formatting, the same on every split; and `data.split`, two parts drawn from one split.

Torch-free and written over column batches (`{column: [values]}`), so that `finetune validate` runs the very code
that `datasets.map` runs when training (`finetune.data`). Each row keeps its origin, the number of the row of the
split it came from: a side file's line N joins the rows that came from row N, whatever came before.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from finetune.errors import FinetuneError
from finetune.recipe.data_section import DataSpec
from finetune.recipe.transforms import (
    AnswerSpec,
    CastSpec,
    FilterSpec,
    JoinSpec,
    MapSpec,
    SplitSpec,
    SplitTextSpec,
    Transform,
    transform_kind,
)

Columns = dict[str, list[Any]]
Rows = TypeVar("Rows")  # a list of row dicts (validation) or a datasets.Dataset (training)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class TransformError(FinetuneError):
    """A transform that cannot apply to the rows it met."""


def transform_rows(
    transforms: list[Transform], split: str, rows: list[dict[str, Any]], unlabelled: bool = False
) -> list[dict[str, Any]]:
    """A split's rows (dicts, as `finetune.sources` reads them) after the transforms; `unlabelled`: rows to predict,
    which may lack the answer and whatever else the model does not read (see `Transformer`)."""
    if not transforms:
        return rows
    names = dict.fromkeys(key for row in rows for key in row)
    columns = {name: [row.get(name) for row in rows] for name in names}
    out = Transformer(transforms, split, len(rows), unlabelled)(columns, list(range(len(rows))))
    return [dict(zip(out, values)) for values in zip(*out.values())] if out else []


class Transformer:
    """The transforms of one split as a function of a column batch and its rows' numbers (`datasets.map`'s
    `batched=True, with_indices=True` signature).

    `unlabelled` rows (`finetune predict`'s input, in the training data's shape) have no side files, so joins are
    left out, and may lack the answer and other columns the model does not read: each step applies to the columns
    it names that the rows have and is left out when they have none. A text column the task reads and the rows
    lack is the caller's to report."""

    def __init__(self, transforms: list[Transform], split: str, rows: int | None, unlabelled: bool = False) -> None:
        self.steps: list[tuple[str, str, Any]] = []  # (kind, name in errors, the kind's own settings)
        for n, transform in enumerate(transforms):
            kind = transform_kind(transform)
            if not (unlabelled and kind == "join"):
                self.steps.append((kind, f"data.transforms.{n} ({kind})", getattr(transform, kind)))
        self.split, self.unlabelled = split, unlabelled
        self.side = {
            n: _side_lines(name, spec, split, rows) for n, (kind, name, spec) in enumerate(self.steps) if kind == "join"
        }

    def __call__(self, columns: Columns, origin: list[int]) -> Columns:
        columns = dict(columns)
        for n, (kind, name, spec) in enumerate(self.steps):
            if self.unlabelled and (spec := _present(kind, spec, columns)) is None:
                continue
            step = Step(name, self.split, columns, origin)
            if kind == "join":
                step.need_absent(spec.column)
                lines = self.side[n]
                last = max(origin, default=-1)
                if last >= len(lines):  # a streamed split's rows are not counted beforehand
                    raise step.fail(f"{spec.files[self.split]} has {len(lines)} lines, none left", origin.index(last))
                columns[spec.column] = [lines[i] for i in origin]
            else:
                columns, origin = STEPS[kind](step, spec)
        return columns


def _present(kind: str, spec: Any, columns: Columns) -> Any:
    """A step's settings cut to the columns the rows have; None when it names none of them."""

    def has(path: str) -> bool:
        return path.split(".")[0] in columns

    if kind == "rename":
        return {old: new for old, new in spec.items() if has(old)} or None
    if kind in ("select", "drop", "explode"):
        return [c for c in spec if has(c)] or None
    if kind == "cast":
        kept = [c for c in spec.columns if has(c)]
        return spec.model_copy(update={"columns": kept}) if kept else None
    reads = [spec.column, *([spec.names] if kind == "answer" and spec.names else [])]
    return spec if all(has(c) for c in reads) else None


class Step:
    """One transform meeting one batch: its name and split for errors, the columns and their rows' origins."""

    def __init__(self, name: str, split: str, columns: Columns, origin: list[int]) -> None:
        self.name, self.split, self.columns, self.origin = name, split, columns, origin

    def fail(self, message: str, row: int | None = None, hint: str = "") -> TransformError:
        where = f"row {self.origin[row]} of split" if row is not None else "split"
        return TransformError(f"{self.name}: {message} in {where} {self.split!r}{hint}")

    def need(self, *paths: str) -> None:
        for path in paths:
            if path.split(".")[0] not in self.columns:
                raise self.fail(f"no column {path!r} (columns: {', '.join(self.columns) or 'none'})")

    def need_absent(self, column: str) -> None:
        if column in self.columns:
            raise self.fail(f"column {column!r} exists already; drop or rename it first")

    def values(self, path: str) -> list[Any]:
        """A column's values; a dotted path reads inside each row's record, and through a list of records
        (`choices.label` of `choices: [{text, label}, ...]` is the list of labels)."""
        self.need(path)
        top, _, rest = path.partition(".")
        if not rest:
            return self.columns[top]
        found = []
        for row, value in enumerate(self.columns[top]):
            try:
                found.append(_dig(value, rest.split(".")))
            except KeyError:
                raise self.fail(f"no field {path!r}", row) from None
        return found

    def rows(self, keep: list[int]) -> tuple[Columns, list[int]]:
        """The batch cut (or repeated) to the rows numbered in `keep`."""
        return {c: [values[i] for i in keep] for c, values in self.columns.items()}, [self.origin[i] for i in keep]


def _dig(value: Any, parts: list[str]) -> Any:
    if not parts:
        return value
    if isinstance(value, list):
        return [_dig(item, parts) for item in value]
    if not isinstance(value, dict) or parts[0] not in value:
        raise KeyError(parts[0])
    return _dig(value[parts[0]], parts[1:])


def _rename(step: Step, renames: dict[str, str]) -> tuple[Columns, list[int]]:
    step.need(*renames)
    for new in renames.values():
        if new in step.columns and new not in renames:
            step.need_absent(new)
    return {renames.get(c, c): v for c, v in step.columns.items()}, step.origin


def _select(step: Step, names: list[str]) -> tuple[Columns, list[int]]:
    step.need(*names)
    return {c: step.columns[c] for c in names}, step.origin


def _drop(step: Step, names: list[str]) -> tuple[Columns, list[int]]:
    step.need(*names)
    return {c: v for c, v in step.columns.items() if c not in names}, step.origin


def _map(step: Step, spec: MapSpec) -> tuple[Columns, list[int]]:
    table = {_key(k): v for k, v in spec.values.items()}
    mapped = []
    for row, value in enumerate(step.values(spec.column)):
        if _key(value) in table:
            mapped.append(table[_key(value)])
        elif spec.unmapped == "keep":
            mapped.append(value)
        else:
            raise step.fail(f"{spec.column} {value!r} is not in the table", row, "; unmapped: keep passes it as it is")
    return {**step.columns, spec.into or spec.column: mapped}, step.origin


def _answer(step: Step, spec: AnswerSpec) -> tuple[Columns, list[int]]:
    names = step.values(spec.names) if spec.names else None
    positions = []
    for row, value in enumerate(step.values(spec.column)):
        text = _key(value).strip()
        if names is not None:
            listed = [_key(name).strip() for name in names[row]] if isinstance(names[row], list) else []
            if text not in listed:
                raise step.fail(f"{spec.column} {value!r} is none of {spec.names} {listed}", row)
            positions.append(listed.index(text))
        elif spec.style == "letter":
            if len(text) != 1 or text.upper() not in LETTERS:
                raise step.fail(f"{spec.column} {value!r} is not a letter A-Z", row)
            positions.append(LETTERS.index(text.upper()))
        else:
            base = 1 if spec.style == "one_based" else 0
            if not re.fullmatch(r"\d+", text) or int(text) < base:
                raise step.fail(f"{spec.column} {value!r} is not a {spec.style.replace('_', '-')} position", row)
            positions.append(int(text) - base)
    return {**step.columns, spec.into or spec.column: positions}, step.origin


def _split_text(step: Step, spec: SplitTextSpec) -> tuple[Columns, list[int]]:
    pattern = re.compile(spec.pattern)
    items, names, prefixes = [], [], []
    for row, value in enumerate(step.values(spec.column)):
        if not isinstance(value, str):
            raise step.fail(f"{spec.column} holds {type(value).__name__}, not text", row)
        parts = pattern.split(value)
        head, rest = parts[0].strip(), parts[1:]
        if head and spec.prefix is None and pattern.groups:
            raise step.fail(
                f"{spec.column} has text before the first separator ({head[:40]!r})",
                row,
                "; name a prefix column to keep it",
            )
        if not pattern.groups:
            items.append([p.strip() for p in parts if p.strip()] if value.strip() else [])
            continue
        prefixes.append(head)
        names.append(list(rest[0::2]))
        items.append([text.strip() for text in rest[1::2]])
    columns = {**step.columns, spec.into or spec.column: items}
    if spec.names:
        columns[spec.names] = names
    if spec.prefix:
        columns[spec.prefix] = prefixes
    return columns, step.origin


def _explode(step: Step, names: list[str]) -> tuple[Columns, list[int]]:
    keep, items = [], {c: [] for c in names}
    lists = {c: step.values(c) for c in names}
    for row in range(len(step.origin)):
        lengths = {c: len(v[row]) if isinstance(v[row], list) else None for c, v in lists.items()}
        if None in lengths.values():
            column = next(c for c, n in lengths.items() if n is None)
            raise step.fail(f"{column} is not a list", row)
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{c} {n}" for c, n in lengths.items())
            raise step.fail(f"the lists differ in length ({sizes})", row)
        for position in range(next(iter(lengths.values()))):
            keep.append(row)
            for c in names:
                items[c].append(lists[c][row][position])
    columns, origin = step.rows(keep)
    return {**columns, **items}, origin


def _filter(step: Step, spec: FilterSpec) -> tuple[Columns, list[int]]:
    test = _condition(step, spec)
    return step.rows([row for row, value in enumerate(step.values(spec.column)) if test(value, row)])


def _condition(step: Step, spec: FilterSpec) -> Callable[[Any, int], bool]:
    op, wanted = spec.op, spec.value
    if op in ("empty", "not empty"):
        return lambda v, _: (v is None or v == [] or (isinstance(v, str) and not v.strip())) == (op == "empty")
    if op in ("in", "not in"):
        keys = {_key(w) for w in wanted}
        return lambda v, _: (_key(v) in keys) == (op == "in")
    if op in ("==", "!="):
        return lambda v, _: (_key(v) == _key(wanted)) == (op == "==")
    bound = _number(step, wanted, None, "value")

    def compare(value: Any, row: int) -> bool:
        number = _number(step, value, row, spec.column)
        return {"<": number < bound, "<=": number <= bound, ">": number > bound, ">=": number >= bound}[op]

    return compare


def _cast(step: Step, spec: CastSpec) -> tuple[Columns, list[int]]:
    columns = dict(step.columns)
    for column in spec.columns:
        converted = []
        for row, value in enumerate(step.values(column)):
            items = value if isinstance(value, list) else [value]
            done = [_convert(step, item, spec.to, row, column) for item in items]
            converted.append(done if isinstance(value, list) else done[0])
        columns[column] = converted
    return columns, step.origin


def _convert(step: Step, value: Any, to: str, row: int, column: str) -> Any:
    if value is None:
        return None
    if to == "text":
        return _key(value) if not isinstance(value, str) else value
    number = _number(step, value, row, column)
    if to == "float":
        return number
    if not number.is_integer():
        raise step.fail(f"{column} {value!r} is not a whole number", row)
    return int(number)


def _number(step: Step, value: Any, row: int | None, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise step.fail(f"{what} {value!r} is not a number", row) from None


def _key(value: Any) -> str:
    """A value as comparable text: 1, 1.0 and "1" alike; true and "true" alike."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


STEPS: dict[str, Callable[[Step, Any], tuple[Columns, list[int]]]] = {
    "rename": _rename,
    "select": _select,
    "drop": _drop,
    "map": _map,
    "answer": _answer,
    "split_text": _split_text,
    "explode": _explode,
    "filter": _filter,
    "cast": _cast,
}


def _side_lines(name: str, spec: JoinSpec, split: str, rows: int | None) -> list[str]:
    """A join's side file for `split`, one stripped line per row of the split (`rows`, when known)."""
    if split not in spec.files:
        raise TransformError(f"{name}: no file for split {split!r} in files ({', '.join(spec.files)})")
    path = Path(spec.files[split]).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TransformError(f"{name}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TransformError(f"{name}: {path} is not readable UTF-8 text ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if rows is not None and len(lines) != rows:
        raise TransformError(f"{name}: {path} has {len(lines)} lines, split {split!r} {rows} rows")
    return [line.strip() for line in lines]


def side_files(transforms: list[Transform], split: str) -> list[Path]:
    """The side files the transforms read for `split` (their sizes and times go into the cache's fingerprint)."""
    return [Path(t.join.files[split]).expanduser() for t in transforms if hasattr(t, "join") and split in t.join.files]


def plan(spec: DataSpec, splits: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """For each role (`train`, `eval`), the split read and the part of it taken: with data.split, the recipe's
    training and evaluation splits are parts of data.split.from; any other split is read whole."""
    roles = {"train": spec.train_split, "eval": spec.eval_split}
    return {
        key: (spec.split.source, key) if spec.split is not None and roles.get(key) == split else (split, None)
        for key, split in splits.items()
    }


def split_parts(
    spec: DataSpec, splits: dict[str, str], read: Callable[[str, str], Rows], take: Callable[[Rows, list[int]], Rows]
) -> dict[str, Rows]:
    """Each role's rows (`splits` by role, e.g. `{"train": "train", "eval": "validation"}`): `read(role, split)`
    reads a split and applies the transforms, once per split; a role takes it whole, or its data.split part
    (`take(rows, row_numbers)`). The same for validation's lists of rows and for training's datasets."""
    whole: dict[str, Rows] = {}
    found = {}
    for key, (split, part) in plan(spec, splits).items():
        if split not in whole:
            whole[split] = read(key, split)
            if spec.transforms and len(whole[split]) == 0:
                raise FinetuneError(f"data.transforms: no row of split {split!r} is left")
        rows = whole[split]
        found[key] = rows if part is None else take(rows, partition(len(rows), spec.split)[part])
    return found


def partition(rows: int, spec: SplitSpec) -> dict[str, list[int]]:
    """`data.split`: the row numbers of the training and evaluation parts, a seeded draw of eval_share held out."""
    order = list(range(rows))
    random.Random(spec.seed).shuffle(order)
    held = round(rows * spec.eval_share)
    if held < 1 or held >= rows:
        raise FinetuneError(
            f"data.split: {spec.eval_share} of {rows} rows of split {spec.source!r} leaves a part empty"
        )
    return {"eval": sorted(order[:held]), "train": sorted(order[held:])}
