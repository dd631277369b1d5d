"""Data: load the recipe's splits through `datasets`, settle the label set, cap, and tokenize (cached)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging

import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, Value, load_dataset
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from finetune.errors import STREAM_LABELS, FinetuneError, first_line
from finetune.fields import get_field
from finetune.instructions import load_mixture
from finetune.labels import infer_labels
from finetune.recipe.data_section import DataSpec
from finetune.recipe.schema import Recipe
from finetune.sources import HubDataset, LocalTables, read_rows, resolve_source
from finetune.specs import TaskSpec
from finetune.streaming import columns_of, materialized, stream_split
from finetune.tasks import Task
from finetune.transforms import Transformer, side_files, split_parts

log = logging.getLogger(__name__)


def load_splits(recipe: Recipe, splits: dict[str, str]) -> tuple[DatasetDict, dict]:
    """The named splits with their columns checked; an instruction recipe's train and eval examples drawn from
    its mixture instead, with the mixture's report (empty for other tasks)."""
    if not recipe.task.reads_mixture:
        raw = load_streamed(recipe.data, splits) if recipe.data.streaming else load_raw(recipe.data, splits)
        check_columns(raw, recipe.task)
        return raw, {}
    examples, report = load_mixture(recipe)
    loaded = {}
    for key in splits:
        loaded[key] = Dataset.from_list(examples[key])
        loaded[key]._fingerprint = Hasher.hash(examples[key])  # the same mixture hits the tokenization cache
    return DatasetDict(loaded), report


def load_raw(spec: DataSpec, splits: dict[str, str]) -> DatasetDict:
    """Load the named splits (`{"train": "train", "eval": "validation"}`) with their source's column names, after
    data.transforms; with data.split, the training and evaluation parts of one split."""
    source = resolve_source(spec)

    def read(key: str, split: str) -> Dataset:
        one = {key: split}
        loaded = _load_hub(source, one) if isinstance(source, HubDataset) else _load_local(source, spec, one)
        return _transformed(loaded[key], spec, split)

    return DatasetDict(split_parts(spec, splits, read, Dataset.select))


def load_streamed(spec: DataSpec, splits: dict[str, str]) -> DatasetDict:
    """data.streaming: the training split as a stream (its first data.max_train_samples rows); an evaluation split
    read whole, as without streaming: from local files as they are, from the Hub through a stream (its first
    data.max_eval_samples rows), so that no other split of it is downloaded."""
    streamed = {}
    for key, split in splits.items():
        if key == "train":
            stream = stream_split(spec, key, split)
            streamed[key] = stream.take(spec.max_train_samples) if spec.max_train_samples else stream
        elif isinstance(resolve_source(spec), HubDataset):
            streamed[key] = materialized(stream_split(spec, key, split), spec.max_eval_samples)
        else:
            streamed[key] = load_raw(spec, {key: split})[key]
    return DatasetDict(streamed)


def _transformed(ds: Dataset, spec: DataSpec, split: str) -> Dataset:
    """One split after data.transforms, cached under the split's, the transforms' and the side files' identity."""
    if not spec.transforms:
        return ds
    sides = [
        (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in side_files(spec.transforms, split) if p.is_file()
    ]
    identity = (ds._fingerprint, split, [t.model_dump(mode="json") for t in spec.transforms], sides)
    try:
        done = ds.map(
            Transformer(spec.transforms, split, len(ds)),
            batched=True,
            with_indices=True,
            remove_columns=ds.column_names,
            try_original_type=False,  # a cast column keeps the type it was cast to
            new_fingerprint=Hasher.hash(identity),
            desc=f"Transforming {split}",
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise FinetuneError(
            f"data.transforms: split {split!r}: a column mixes kinds of values ({first_line(exc)})"
        ) from None
    return done


def _load_hub(source: HubDataset, splits: dict[str, str]) -> DatasetDict:
    try:
        loaded = {key: load_dataset(source.path, source.name, split=split) for key, split in splits.items()}
    except Exception as exc:  # datasets raises many types (connection, missing config, missing split)
        raise FinetuneError(f"data.source: cannot load {source.path} ({source.name}): {first_line(exc)}") from None
    return DatasetDict(loaded)


def _load_local(source: LocalTables, spec: DataSpec, splits: dict[str, str]) -> DatasetDict:
    loaded = {}
    for key, split in splits.items():
        if split not in source.files:
            raise FinetuneError(f"data.{key}_split: no split {split!r} (splits: {', '.join(source.files)})")
        fmt = source.format_of(split, spec.format)
        if fmt in ("lines", "json"):  # line-aligned text; a JSON file may hold one record, which datasets misreads
            loaded[key] = _load_rows(source, split, fmt)
            continue
        paths = [str(p) for p in source.files[split]]
        if fmt in ("csv", "tsv"):
            loaded[key] = _load_delimited(source, split, fmt, paths)
        elif fmt == "jsonl":
            loaded[key] = load_dataset("json", data_files={split: paths}, split=split, encoding=source.reader.encoding)
        else:
            loaded[key] = load_dataset("parquet", data_files={split: paths}, split=split)
        if source.flatten:
            loaded[key] = loaded[key].flatten()
        renames = {k: v for k, v in source.rename.items() if k in loaded[key].column_names}
        loaded[key] = loaded[key].rename_columns(renames)
    return DatasetDict(loaded)


def _load_rows(source: LocalTables, split: str, fmt: str) -> Dataset:
    """Rows our reader reads (line-aligned text, JSON) as a dataset, fingerprinted by the files' paths, sizes and
    times (for the cache)."""
    rows = list(read_rows(source, split, fmt))
    if not rows:
        raise FinetuneError(f"data.files.{split}: {source.named(split)} holds no rows")
    columns = dict.fromkeys(key for row in rows for key in row)  # every record's keys, not the first one's alone
    try:
        dataset = Dataset.from_dict({column: [row.get(column) for row in rows] for column in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FinetuneError(f"data.files.{split}: {source.named(split)}: {first_line(exc)}") from None
    files = source.files[split]
    paths = [p for f in files.values() for p in (f if isinstance(f, list) else [f])] if fmt == "lines" else files
    dataset._fingerprint = Hasher.hash([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths])
    return dataset


def _load_delimited(source: LocalTables, split: str, fmt: str, paths: list[str]) -> Dataset:
    reader = source.reader
    first = next(read_rows(LocalTables(source.files, reader, {}, source.origin, False), split, fmt), None)
    if first is None:
        raise FinetuneError(f"data.files.{split}: {source.named(split)} has no rows")
    # Every column as text: pandas would otherwise guess types chunk by chunk and turn "NA" into a missing value.
    features = Features({name: Value("string") for name in first})
    return load_dataset(
        "csv",
        data_files={split: paths},
        split=split,
        delimiter=source.delimiter(fmt),
        quoting=csv.QUOTE_NONE if reader.quoting == "none" else csv.QUOTE_MINIMAL,
        encoding=reader.encoding,
        header=0 if reader.header else None,
        names=list(first),
        keep_default_na=False,
        na_filter=False,
        features=features,
    )


def resolve_labels(recipe: Recipe, train: Dataset) -> list[str] | None:
    """The class names: the recipe's, the dataset's ClassLabel names, or the sorted training values."""
    if not recipe.task.has_classes:
        return None
    if recipe.task.labels:
        return list(recipe.task.labels)
    path = recipe.task.label
    feature = (train.features or {}).get(path)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(train, IterableDataset):
        raise FinetuneError(STREAM_LABELS.format(path=path))
    values = train.unique(path) if "." not in path else [get_field(row, path) for row in train]
    labels = infer_labels(values)
    log.info("task.labels inferred from the train split: %s", labels)
    return labels


def check_columns(raw: DatasetDict, spec: TaskSpec) -> None:
    """Every column the task reads is present in every split; else name what is there."""
    present = {key: columns_of(ds, f"the {key} split") for key, ds in raw.items()}
    problems = [
        f"task: no column {column!r} in the {key} split (columns: {', '.join(present[key])})"
        for key in raw
        for column in dict.fromkeys(path.split(".")[0] for path in spec.fields(key).values())
        if column not in present[key]
    ]
    if problems:
        raise FinetuneError(*problems)


def cap_splits(raw: DatasetDict, spec: DataSpec, seed: int) -> DatasetDict:
    """Apply max_train_samples (a seeded random subset) and max_eval_samples (the first rows)."""
    capped = dict(raw)
    if spec.max_train_samples and "train" in raw and len(raw["train"]) > spec.max_train_samples:
        capped["train"] = raw["train"].shuffle(seed=seed).select(range(spec.max_train_samples))
    if spec.max_eval_samples and "eval" in raw and len(raw["eval"]) > spec.max_eval_samples:
        capped["eval"] = raw["eval"].select(range(spec.max_eval_samples))
    for key, ds in capped.items():
        if len(ds) == 0:
            raise FinetuneError(f"data.{key}_split: the split is empty")
    return DatasetDict(capped)


def tokenize(raw: DatasetDict, task: Task, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Format and tokenize every split with `datasets.map`, cached under a fingerprint of everything that matters."""
    tokenized = {}
    identity = (task.formatting_identity(), max_length, _tokenizer_identity(tokenizer))
    for key, ds in raw.items():
        fingerprint = Hasher.hash((ds._fingerprint, *identity))
        tokenized[key] = ds.map(
            task.formatter(key),
            batched=True,
            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
            remove_columns=ds.column_names,
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {key}",
        )
    return DatasetDict(tokenized)


def _tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> tuple:
    """What decides a tokenizer's output; hashing the object itself is unstable (its state changes on use)."""
    return (
        type(tokenizer).__name__,
        tokenizer.name_or_path,
        len(tokenizer),
        tokenizer.padding_side,
        tokenizer.truncation_side,
        hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest(),  # cheap to hash
    )


def log_samples(tokenized: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, count: int = 2) -> None:
    """Log a few formatted examples decoded back to text, so a broken layout shows up at once."""
    for index, row in enumerate(tokenized.take(count)):
        ids = row["input_ids"]
        texts = [tokenizer.decode(seq) for seq in ids] if ids and isinstance(ids[0], list) else [tokenizer.decode(ids)]
        label = row.get("labels")
        if isinstance(label, list):  # a generated target: the learned tokens as text
            label = repr(tokenizer.decode([t for t in label if t >= 0]))
        log.info("sample %d: %s", index, " || ".join(texts) + (f" | label {label}" if label is not None else ""))
