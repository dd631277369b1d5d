"""Where a recipe's examples come from, and a light reader for local tables.

Torch-free on purpose: `finetune validate` reads headers and label values through here in well
under a second, and `finetune.data` loads the same files through `datasets` with the same options.
"""

from __future__ import annotations

import csv
import glob
import gzip
import itertools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.mirrors import LineFiles, as_paths, resolve_dataset
from finetune.recipe.data_section import DataSpec, ReaderSpec

FORMATS_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class LocalTables:
    """Local files by split (a table split is one file or several, read in order as one), with the options that
    read them and the renames that apply after."""

    files: dict[str, list[Path] | LineFiles]
    reader: ReaderSpec
    rename: dict[str, str]
    origin: str
    flatten: bool = False

    def format_of(self, split: str, declared: str = "auto") -> str:
        """The file format of one split: the declared one, else the files' extension (one for all of them)."""
        paths = self.files[split]
        if isinstance(paths, dict):
            return "lines"
        if declared != "auto":
            return declared
        found = {}
        for path in paths:
            suffixes = [s for s in path.suffixes if s in FORMATS_BY_SUFFIX]
            if not suffixes:
                raise FinetuneError(
                    f"data.files.{split}: cannot tell the format of {path.name}; set data.format "
                    f"({', '.join(sorted(set(FORMATS_BY_SUFFIX.values())))})"
                )
            found.setdefault(FORMATS_BY_SUFFIX[suffixes[-1]], path.name)
        if len(found) > 1:
            raise FinetuneError(f"data.files.{split}: {' and '.join(found.values())} are in different formats")
        return next(iter(found))

    def named(self, split: str) -> str:
        """The split's files as a user would name them in a message."""
        paths = self.files[split]
        if isinstance(paths, dict):
            return ", ".join(f"{column}: {files}" for column, files in paths.items())
        return str(paths[0]) if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more files"

    def delimiter(self, fmt: str) -> str:
        return self.reader.delimiter or ("\t" if fmt == "tsv" else ",")


@dataclass(frozen=True)
class HubDataset:
    """A dataset to fetch from the Hub (no local copy known)."""

    path: str
    name: str | None


def resolve_source(spec: DataSpec) -> LocalTables | HubDataset:
    """Local files named by the recipe, a mirrored copy of a Hub dataset, or the Hub dataset itself."""
    return locate(spec.source, spec.subset, spec.files, spec.reader)


def locate(
    source: str | None, subset: str | None, files: dict[str, Any] | None, reader: ReaderSpec
) -> LocalTables | HubDataset:
    """Where a dataset's rows are: `files` (local, by split), else the mirror's copy of `source`, else the Hub."""
    if files is not None:
        return LocalTables({k: _tables(k, v) for k, v in files.items()}, reader, {}, "data.files")
    mirrored = resolve_dataset(source, subset)
    if mirrored is None:
        return HubDataset(source, subset)
    reader = ReaderSpec.model_validate({**reader.model_dump(exclude_defaults=True), **mirrored.reader})
    tables = {k: v if isinstance(v, dict) else [v] for k, v in mirrored.files.items()}
    return LocalTables(tables, reader, mirrored.rename, f"mirror of {source}", mirrored.flatten)


def _tables(split: str, value: str | list[str] | dict[str, Any]) -> list[Path] | LineFiles:
    """A split's files: a path, a glob (sorted matches) or a list of paths; or line-aligned files by column."""
    if isinstance(value, dict):
        return as_paths(value)
    paths = []
    for name in value if isinstance(value, list) else [value]:
        expanded = os.path.expanduser(str(name))
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded))
            if not matches:
                raise FinetuneError(f"data.files.{split}: no file matches {name}")
            paths += [Path(match) for match in matches]
        else:
            paths.append(Path(expanded))
    if not paths:
        raise FinetuneError(f"data.files.{split}: an empty list of files")
    return paths


def read_rows(tables: LocalTables, split: str, fmt: str) -> Iterator[dict[str, Any]]:
    """Yield one split's rows as dicts (renames applied), raising FinetuneError on unreadable input."""
    paths = tables.files[split]
    if fmt == "lines":
        yield from _read_lines(split, paths)
        return
    for path in paths:
        if not path.is_file():
            raise FinetuneError(f"data.files.{split}: file not found: {path}")
    for path in paths:
        yield from _renamed_rows(tables, split, path, fmt)


def _renamed_rows(tables: LocalTables, split: str, path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    try:
        for row in _read_table(path, fmt, tables):
            row = flatten_row(row) if tables.flatten else row
            yield {tables.rename.get(k, k): v for k, v in row.items()}
    except UnicodeDecodeError as exc:
        raise FinetuneError(
            f"data.files.{split}: {path} is not {tables.reader.encoding} text (byte {exc.start}); "
            "set data.reader.encoding"
        ) from None
    except csv.Error as exc:
        hint = "; try data.reader.quoting: none" if tables.reader.quoting != "none" else ""
        raise FinetuneError(f"data.files.{split}: {path} cannot be read as a table ({exc}){hint}") from None


def flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested records as dotted keys, as `datasets.Dataset.flatten` does: {"q": {"stem": s}} -> {"q.stem": s}."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(flatten_row(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_lines(split: str, columns: LineFiles) -> Iterator[dict[str, Any]]:
    """Rows from line-aligned text files, one column (or one list item) per file, read together line by line (a
    parallel corpus need not fit in memory); every file must have as many lines as the others."""
    files = [
        (column if not isinstance(paths, list) else f"{column}[{n}]", column, path)
        for column, paths in columns.items()
        for n, path in enumerate(paths if isinstance(paths, list) else [paths])
    ]
    for _, column, path in files:
        if not path.is_file():
            raise FinetuneError(f"data.files.{split}.{column}: file not found: {path}")
    lines = [_lines_of(split, column, path) for _, column, path in files]
    for number, values in enumerate(itertools.zip_longest(*lines)):
        if None in values:  # one file ended: count the others' lines (without holding them) for the message
            counts = [number + (value is not None) + sum(1 for _ in rest) for value, rest in zip(values, lines)]
            sizes = ", ".join(f"{name} {n}" for (name, _, _), n in zip(files, counts))
            raise FinetuneError(f"data.files.{split}: line-aligned files differ in length ({sizes} lines)")
        row: dict[str, Any] = {}
        for (name, column, _), value in zip(files, values):
            if name == column:
                row[column] = value
            else:
                row.setdefault(column, []).append(value)
        yield row


def _lines_of(split: str, column: str, path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\r\n").strip()
    except (UnicodeDecodeError, OSError) as exc:
        raise FinetuneError(f"data.files.{split}.{column}: {path} is not UTF-8 text ({exc})") from None


def _read_table(path: Path, fmt: str, tables: LocalTables) -> Iterator[dict[str, Any]]:
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, tables.delimiter(fmt), tables.reader)
    if fmt == "jsonl":
        return _read_jsonl(path, tables.reader.encoding)
    if fmt == "json":
        return _read_json(path, tables.reader.encoding)
    return _read_parquet(path)


def _read_delimited(path: Path, delimiter: str, reader: ReaderSpec) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(sys.maxsize)  # a long document is a valid field (the module's default limit is 128 KiB)
    quoting = csv.QUOTE_NONE if reader.quoting == "none" else csv.QUOTE_MINIMAL
    with path.open(encoding=reader.encoding, newline="") as handle:
        lines = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        names = list(reader.column_names) if reader.column_names else None
        if reader.header:
            header = next(lines, None)
            names = names or header
        if not names:
            return
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise FinetuneError(f"{path}: the header names column {', '.join(map(repr, twice))} more than once")
        for number, fields in enumerate(lines, start=2 if reader.header else 1):
            if not fields:
                continue
            if any("\x00" in field for field in fields):
                raise FinetuneError(f"{path}: line {number} holds a NUL byte; is it a text file?")
            if len(fields) != len(names):
                raise FinetuneError(
                    f"{path}: line {number} has {len(fields)} fields, the header {len(names)}"
                    + ("; try data.reader.quoting: none" if reader.quoting != "none" else "")
                )
            yield dict(zip(names, fields, strict=True))


def _read_jsonl(path: Path, encoding: str) -> Iterator[dict[str, Any]]:
    with path.open(encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield _json_record(line, path, number)


def _read_json(path: Path, encoding: str) -> Iterator[dict[str, Any]]:
    text = path.read_text(encoding=encoding)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # datasets' json loader also reads JSON lines under a .json name
        yield from (_json_record(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip())
        return
    if isinstance(data, dict):  # one record a file
        data = [data]
    if not isinstance(data, list):
        raise FinetuneError(f"{path}: expected a JSON record or a list of records, not {type(data).__name__}")
    for number, record in enumerate(data):
        if not isinstance(record, dict):
            raise FinetuneError(f"{path}: item {number} of the list is not a JSON object (a record of columns)")
        yield record


def _json_record(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FinetuneError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise FinetuneError(f"{path}: line {number} is not a JSON object")
    return record


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()  # a batch at a time: a streamed split may not fit in memory
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise FinetuneError(f"{path}: not a readable parquet file ({exc})") from None
    for batch in batches:
        yield from batch.to_pylist()
