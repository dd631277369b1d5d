"""Similarity: an unordered pair, as in GPT-1. Both orderings run through the same network; their final
representations are added before the classification head, so swapping the texts cannot change the prediction:

    logits = head(h_ab + h_ba)

The final representation is what the checkpoint's own head reads: BERT's pooled [CLS] state (`classifier`), the
first token's state for ELECTRA, RoBERTa and DeBERTa (`classifier`, which pools inside), BART's and T5's final
state at the last end-of-sequence token (`classification_head`), a decoder's state at `[extract]` (GPT-1's head).
The sum is taken at the head's input, so a head with layers of its own (ELECTRA's dense + GELU + projection)
reads the sum, as GPT-1 describes. The model stays the library's own class, saved and loaded as one.
(The text_to_text head of T5 scores class words instead: there the two orderings' log-probabilities add.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from finetune.batching import GroupCollator
from finetune.columns import CHOICE_MASK
from finetune.errors import FinetuneError
from finetune.fields import get_field
from finetune.specs import TaskSpec
from finetune.tasks.base import Task
from finetune.tasks.classification import Classification
from finetune.tasks.regression import Regression

HEAD_NAMES = ("classifier", "classification_head", "head", "score")  # a task head's module name, by library


class Similarity(Task):
    name = "similarity"

    def __init__(self, spec: TaskSpec, labels: list[str] | None, *args: Any, **kwargs: Any) -> None:
        self.head = Regression(spec, None) if spec.predicts_score else Classification(spec, labels)
        super().__init__(spec, labels, *args, **kwargs)
        self.problem_type = self.head.problem_type

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    def encode_texts(self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
        """Both orderings: `[start] a [delim] b [extract]` and `[start] b [delim] a [extract]`."""
        a, b = (str(get_field(row, path)) for path in (self.spec.text_a, self.spec.text_b))
        orderings = [self.encode(tokenizer, max_length, first, second) for first, second in ((a, b), (b, a))]
        return {key: [o[key] for o in orderings] for key in orderings[0]}  # each value: 2 sequences

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> GroupCollator:
        return GroupCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.flatten(0, 1) for k, v in batch.items() if k not in ("labels", CHOICE_MASK)}  # (2B, L)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        with orderings_summed(model):  # the head sees (B, ...) sums of the (2B, ...) representations
            return super().forward(model, batch)

    def example_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.example_losses(logits, labels)

    def metric_inputs(self, logits: np.ndarray) -> np.ndarray:
        return self.head.metric_inputs(logits)

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return self.head.describe(logits)


def task_head(model: torch.nn.Module) -> torch.nn.Module:
    """The model's task head: the outermost module named as a library names its head (through wrappers: DDP,
    peft's trained copy of the head)."""
    found = [(name, module) for name, module in model.named_modules() if name.split(".")[-1] in HEAD_NAMES]
    if not found:
        raise FinetuneError(f"task.type: similarity cannot find the task head of {type(model).__name__}")
    return min(found, key=lambda item: item[0].count("."))[1]


@contextmanager
def orderings_summed(model: torch.nn.Module) -> Iterator[None]:
    """While active, the task head's input (2B, ...) becomes the sum of each example's two orderings (B, ...)."""

    def add_orderings(_module: torch.nn.Module, args: tuple) -> tuple:
        features = args[0]
        return (features.view(-1, 2, *features.shape[1:]).sum(dim=1), *args[1:])

    handle = task_head(model).register_forward_pre_hook(add_orderings)
    try:
        yield
    finally:
        handle.remove()
