"""Batch order and padding: a seeded, epoch-aware sampler (optionally length-grouped) and the collator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from finetune.columns import CHOICE_MASK, EXAMPLES, PACKED_REAL
from finetune.losses import IGNORE


def example_length(input_ids: list) -> int:
    """Tokens in one example: its sequence, or all of its sequences (orderings or candidates) together."""
    return sum(map(len, input_ids)) if input_ids and isinstance(input_ids[0], list) else len(input_ids)


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch), so any epoch's order can be replayed on resume.

    With `lengths`, indices are grouped into batches of similar length (less padding), as
    transformers' LengthGroupedSampler does; the longest batch comes first, so memory fails early.

    >>> s = EpochSampler(4, seed=0); s.set_epoch(1); a = list(s); s.set_epoch(1)
    >>> a == list(s) and sorted(a) == [0, 1, 2, 3]
    True
    """

    def __init__(self, size: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1) -> None:
        self.size, self.seed, self.lengths, self.batch_size = size, seed, lengths, batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.lengths is None:
            return iter(torch.randperm(self.size, generator=generator).tolist())
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class GroupCollator:
    """Pads examples that each hold several sequences (both orderings of a pair, or k candidates) to
    (batch, k, length) tensors; `choice_mask` marks real candidates, padding repeats an example's first one.

    >>> c = GroupCollator(pad_token_id=0)
    >>> b = c([{"input_ids": [[5, 6], [7]], "attention_mask": [[1, 1], [1]], "labels": 1},
    ...        {"input_ids": [[8]], "attention_mask": [[1]], "labels": 0}])
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["choice_mask"].tolist(), b["labels"].tolist()
    ([[[5, 6], [7, 0]], [[8, 0], [8, 0]]], [[[1, 1], [1, 0]], [[1, 0], [1, 0]]], [[True, True], [True, False]], [1, 0])
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features[0]]
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        batch = pad_groups(features, keys, pads, self.pad_to_multiple_of)
        batch[CHOICE_MASK] = group_mask(features, "input_ids")
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch


def pad_sequences(
    sequences: list[list[int]], value: int, multiple: int | None = None, left: bool = False
) -> torch.Tensor:
    """Sequences padded with `value` to the longest (rounded up to a `multiple`), on the right or the left.

    >>> pad_sequences([[1, 2, 3], [4]], 0).tolist(), pad_sequences([[1, 2], [3]], 0, left=True).tolist()
    ([[1, 2, 3], [4, 0, 0]], [[1, 2], [0, 3]])
    """
    width = max(len(s) for s in sequences)
    if multiple:
        width = -(-width // multiple) * multiple
    return torch.tensor(
        [([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s))) for s in sequences]
    )


def pack_rows(features: list[dict], pad_token_id: int, width: int) -> dict[str, torch.Tensor]:
    """Examples (`input_ids`, `labels`) packed in order into rows, positions restarting per example so that attention
    stays within it (transformers reads restarting positions without an attention mask as packed sequences). Rows
    are as wide as the batch's longest example or as `width` (data.max_length), whichever computes fewer tokens,
    padding included: never more than padding each example to the longest, and a token never attends over more of
    its row than an example of `width` tokens would (one row holding a whole batch would cost attention quadratic
    in the batch).

    Each example's first label is dropped (it would be predicted from the previous example); a row's padding
    continues the last example's positions, labelled -100, so that it adds no example and no target.

    >>> b = pack_rows([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]},
    ...                {"input_ids": [9, 4], "labels": [9, 4]}], 0, 8)
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["labels"].tolist(), int(b["examples"])
    ([[5, 6, 7], [8, 9, 4]], [[0, 1, 2], [0, 0, 1]], [[-100, 6, 7], [-100, -100, 4]], 3)
    """
    longest = max(len(f["input_ids"]) for f in features)
    layouts = [_next_fit(features, w) for w in sorted({longest, max(width, longest)})]
    rows = min(layouts, key=lambda rows: len(rows) * max(sum(len(f["input_ids"]) for f in row) for row in rows))
    ids = [[t for f in row for t in f["input_ids"]] for row in rows]
    labels = [[t for f in row for t in [IGNORE, *f["labels"][1:]]] for row in rows]
    longest = max(map(len, ids))
    positions = []
    for row, tokens in zip(rows, ids):
        last = len(row[-1]["input_ids"])
        padding = range(last, last + longest - len(tokens))
        positions.append([p for f in row for p in range(len(f["input_ids"]))] + list(padding))
    return {
        "input_ids": pad_sequences(ids, pad_token_id),
        "labels": pad_sequences(labels, IGNORE),
        "position_ids": torch.tensor(positions),
        PACKED_REAL: pad_sequences([[1] * len(tokens) for tokens in ids], 0),
        EXAMPLES: torch.tensor(len(features)),
    }


def _next_fit(features: list[dict], width: int) -> list[list[dict]]:
    """The examples in order, a new row whenever the next one would make the row longer than `width`."""
    rows: list[list[dict]] = [[]]
    for feature in features:
        if rows[-1] and sum(len(f["input_ids"]) for f in rows[-1]) + len(feature["input_ids"]) > width:
            rows.append([])
        rows[-1].append(feature)
    return rows


def pad_groups(
    features: list[dict], keys: list[str], pads: dict[str, int], pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Each key's groups of sequences padded to one (B, k, L) tensor; a short group repeats its first sequence."""
    first = features[0][keys[0]]
    groups = max(len(f[keys[0]]) for f in features)
    length = max(len(seq) for f in features for seq in f[keys[0]]) if first else 0
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return {
        key: torch.tensor(
            [[seq + [pads[key]] * (length - len(seq)) for seq in _fill(f[key], groups)] for f in features]
        )  # (B, k, L)
        for key in keys
    }


def group_mask(features: list[dict], key: str) -> torch.Tensor:
    """(B, k) booleans: which of the k groups are an example's own, not padding."""
    groups = max(len(f[key]) for f in features)
    return torch.tensor([[i < len(f[key]) for i in range(groups)] for f in features])


def _fill(sequences: list[list[int]], groups: int) -> list[list[int]]:
    return list(sequences) + [sequences[0]] * (groups - len(sequences))


def chunks(loader: Iterable, size: int) -> Iterator[list]:
    """The loader's batches in lists of `size` (the last one shorter when the epoch's batches run out)."""
    chunk = []
    for batch in loader:
        chunk.append(batch)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
