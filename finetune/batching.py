"""Batch order and padding: a seeded, epoch-aware sampler (optionally length-grouped) and the collator."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


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
