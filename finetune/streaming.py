"""`data.streaming`: a training split read as training consumes it, for corpora larger than memory.

Its rows come from the Hub (`datasets`' streaming) or from local files (through the reader `finetune validate`
uses), pass data.transforms and a seeded shuffle buffer of raw rows, and are tokenized on the fly. The order
depends only on train.seed and the epoch, so a resumed run replays the stream up to its checkpoint's position
(re-reading, not re-training, the batches before it), as an uninterrupted run would have read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from datasets import Dataset, IterableDataset, load_dataset
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from finetune.batching import chunks, example_length
from finetune.columns import LENGTH_STATS, SKIP, TOTAL_LENGTH
from finetune.errors import FinetuneError, first_line
from finetune.recipe.data_section import DataSpec
from finetune.sources import HubDataset, LocalTables, read_rows, resolve_source
from finetune.tasks import Task
from finetune.transforms import Transformer

MEGABATCH = 50  # batches sorted together by length, as transformers' get_length_grouped_indices groups them


def stream_split(spec: DataSpec, key: str, split: str) -> IterableDataset:
    """One split's rows, after data.transforms, as an iterable dataset: nothing is read until it is iterated."""
    source = resolve_source(spec)
    if isinstance(source, HubDataset):
        try:
            stream = load_dataset(source.path, source.name, split=split, streaming=True)
        except Exception as exc:  # datasets raises many types (connection, missing config, missing split)
            raise FinetuneError(
                f"data.source: cannot stream {source.path} ({source.name}): {first_line(exc)}"
            ) from None
    else:
        if split not in source.files:
            raise FinetuneError(f"data.{key}_split: no split {split!r} (splits: {', '.join(source.files)})")
        fmt = source.format_of(split, spec.format)
        stream = IterableDataset.from_generator(_rows, gen_kwargs={"source": source, "split": split, "fmt": fmt})
    if spec.transforms:
        stream = stream.map(
            Transformer(spec.transforms, split, None),
            batched=True,
            with_indices=True,
            remove_columns=columns_of(stream, f"data.{key}_split: split {split!r}"),
        )
    return stream


def _rows(source: LocalTables, split: str, fmt: str) -> Iterator[dict[str, Any]]:
    yield from read_rows(source, split, fmt)


def columns_of(stream: IterableDataset, what: str) -> list[str]:
    """The stream's columns: its features' when known, else its first row's (read for it)."""
    if stream.column_names is not None:
        return stream.column_names
    first = next(iter(stream.take(1)), None)
    if first is None:
        raise FinetuneError(f"{what} holds no rows")
    return list(first)


def materialized(stream: IterableDataset, limit: int | None) -> Dataset:
    """A streamed evaluation split (its first `limit` rows) as a dataset, fingerprinted by its rows for the
    tokenization cache."""
    rows = list(stream.take(limit) if limit else stream)
    if not rows:
        raise FinetuneError("data.eval_split: the streamed split holds no rows")
    columns = dict.fromkeys(key for row in rows for key in row)
    dataset = Dataset.from_dict({column: [row.get(column) for row in rows] for column in columns})
    dataset._fingerprint = Hasher.hash(rows)
    return dataset


def tokenized_stream(
    stream: IterableDataset,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    seed: int,
    buffer: int,
    keep_lengths: bool = False,
) -> IterableDataset:
    """The training stream shuffled (a buffer of raw rows, seeded by train.seed and the epoch) and formatted as the
    task formats a training split, without its skipped rows and statistics columns (but for `keep_lengths`'
    untruncated token counts)."""
    formatter = {"function": task.formatter("train"), "batched": True}
    formatter["fn_kwargs"] = {"tokenizer": tokenizer, "max_length": max_length}
    columns = columns_of(stream, "data.train_split")
    # the formatted columns, from the first batch of the stream as it is read before shuffling
    formatted = columns_of(stream.map(**formatter, remove_columns=columns), "data.train_split after formatting")
    out = stream.shuffle(seed=seed, buffer_size=buffer).map(**formatter, remove_columns=columns)
    if SKIP in formatted:
        out = out.filter(lambda skip: not skip, input_columns=SKIP)
    kept = (TOTAL_LENGTH,) if keep_lengths else ()
    return out.remove_columns([c for c in LENGTH_STATS if c in formatted and c not in kept])


class StreamOrder(torch.utils.data.IterableDataset):
    """The tokenized training stream in the order batches take it: as its shuffle buffer gives it or, grouped by
    length, each run of 50 batches' examples sorted into batches of similar length with the longest first (what
    transformers' length-grouped sampler does to its megabatches of 50 batches in a split's random order). Seeded
    by (seed, epoch)."""

    def __init__(self, stream: IterableDataset, seed: int, batch_size: int, group_by_length: bool) -> None:
        super().__init__()
        self.stream, self.seed, self.batch_size, self.group_by_length = stream, seed, batch_size, group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.group_by_length:
            yield from self.stream
            return
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        for held in chunks(self.stream, MEGABATCH * self.batch_size):
            lengths = [example_length(example["input_ids"]) for example in held]
            for index in get_length_grouped_indices(lengths, self.batch_size, MEGABATCH, generator):
                yield held[index]
