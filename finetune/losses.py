"""Losses as sums over their items, so that an optimizer step weighs every item once.

A step's loss is the mean over all the items of the step (examples for a task head, target tokens for text):
however the step is split into micro-batches (gradient accumulation) and processes (data parallel), and however
short its last accumulation is. Each micro-batch therefore reports each loss term summed over its items, with
their count; the engine counts the step's items first and divides each sum by the step's total, as
transformers' Trainer does with `num_items_in_batch`:

    step loss = sum_k  (sum over the step's items of term k) / (items of term k in the step)

The terms: `task` (the task's loss: per example, or per target token for generated text) and `lm` (a decoder
head's weighted auxiliary language-modelling loss, per input token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a position the loss skips


@dataclass
class Loss:
    """One micro-batch's loss terms, each summed over its items, and the item counts.

    `per_example` holds the task term's sums and counts per example (N,), for evaluation that must drop the
    examples a process repeats to even out the last batch.
    """

    sums: dict[str, torch.Tensor]
    items: dict[str, torch.Tensor]
    per_example: tuple[torch.Tensor, torch.Tensor] | None = None

    def mean(self) -> torch.Tensor:
        """This micro-batch's loss on its own: each term's mean over its items, added."""
        return self.share(self.items)

    def share(self, totals: dict[str, torch.Tensor]) -> torch.Tensor:
        """This micro-batch's part of a step whose items per term are `totals`."""
        return sum(self.sums[k] / totals[k].clamp(min=1) for k in self.sums)

    def plus(self, other: Loss | None) -> Loss:
        """Both losses' terms (a task loss and a head's auxiliary loss)."""
        if other is None:
            return self
        return Loss({**self.sums, **other.sums}, {**self.items, **other.items}, self.per_example)


def example_loss(losses: torch.Tensor) -> Loss:
    """A task term from per-example losses (B,): their sum over B examples."""
    count = torch.tensor(losses.shape[0], device=losses.device)
    return Loss({"task": losses.sum()}, {"task": count}, (losses.detach(), torch.ones_like(losses)))


def token_loss(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool, term: str = "task", segments: torch.Tensor | None = None
) -> Loss:
    """Cross-entropy summed over the labelled tokens (labels (B, T), -100 where none); `shift`: a decoder's logits
    at t predict the label at t+1. `segments` (B, T) numbers the examples packed into each row (else one per row)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
        segments = segments[:, 1:] if segments is not None else None
    return targets_loss(logits[labels != IGNORE], labels, term, segments)


def targets_loss(
    logits: torch.Tensor, labels: torch.Tensor, term: str = "task", segments: torch.Tensor | None = None
) -> Loss:
    """`token_loss` from the logits of the labelled positions only (N, V), in row-major order of labels (B, T)."""
    b, t = labels.shape
    mask = labels != IGNORE
    losses = F.cross_entropy(logits.float(), labels[mask], reduction="none")  # (N,)
    if segments is None:
        segments = torch.arange(b, device=labels.device).unsqueeze(1).expand(b, t)
    examples = int(segments.max()) + 1 if segments.numel() else 0
    owners = segments[mask]
    per_sum = torch.zeros(examples, device=labels.device).index_add_(0, owners, losses.detach())
    per_items = torch.zeros(examples, device=labels.device).index_add_(0, owners, torch.ones_like(losses))
    return Loss({term: losses.sum()}, {term: mask.sum()}, (per_sum, per_items))


def packed_segments(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) example numbers of packed rows, whose positions restart at 0 for every example."""
    starts = (position_ids == 0).long()
    starts[:, 0] = 1
    return starts.view(-1).cumsum(0).view_as(position_ids) - 1


def lm_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """A decoder's inputs as language-modelling labels (B, L): every real token that follows a real token (a
    left-padded row's first token is predicted from padding: not a target); rows outside `rows` (B,) get none."""
    real = attention_mask.bool()
    target = real.clone()
    target[:, 1:] &= real[:, :-1]
    target[:, 0] = False
    if rows is not None:
        target &= rows.view(-1, 1)
    return input_ids.masked_fill(~target, IGNORE)


def count_targets(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """The labelled positions the loss reads (a decoder's first position predicts nothing)."""
    return (labels[..., 1:] if shift else labels).ne(IGNORE).sum()
