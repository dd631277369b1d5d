"""Similarity: an unordered pair, as in GPT-1. Both orderings run through the same network; their outputs are
added before the prediction, so swapping the texts cannot change it.

The head is linear, so adding the two final representations before it, W(h_ab + h_ba) + b, equals adding
the two orderings' outputs, (W h_ab + b) + (W h_ba + b), with the bias doubled. The model therefore stays a
plain `AutoModelForSequenceClassification`, saved and loaded as one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from finetune.batching import GroupCollator
from finetune.fields import get_field
from finetune.tasks.base import Task, add_aux_loss
from finetune.tasks.classification import Classification
from finetune.tasks.regression import Regression


class Similarity(Task):
    name = "similarity"

    def __init__(self, spec, labels):
        super().__init__(spec, labels)
        self.head = Regression(spec, None) if spec.predicts_score else Classification(spec, labels)
        self.problem_type = self.head.problem_type

    @property
    def num_labels(self) -> int:
        return self.head.num_labels

    def encode_label(self, value: Any, row: int) -> int | float:
        return self.head.encode_label(value, row)

    def encode_texts(self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
        """Both orderings: `[start] a [delim] b [extract]` and `[start] b [delim] a [extract]`."""
        a, b = (str(get_field(row, path)) for path in (self.spec.text_a, self.spec.text_b))
        orderings = [self.encode(tokenizer, max_length, first, second) for first, second in ((a, b), (b, a))]
        return {key: [o[key] for o in orderings] for key in orderings[0]}  # each value: 2 sequences

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> GroupCollator:
        return GroupCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def forward(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        labels = batch.get("labels")
        inputs = {k: v.flatten(0, 1) for k, v in batch.items() if k not in ("labels", "choice_mask")}  # (2B, L)
        output = model(**inputs)
        per_ordering = output.logits  # (2B, C)
        logits = per_ordering.view(-1, 2, per_ordering.shape[-1]).sum(dim=1)  # (B, C)
        return add_aux_loss(None if labels is None else self.head.loss(logits, labels), output), logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(logits, labels)

    def metric_inputs(self, logits: np.ndarray) -> np.ndarray:
        return self.head.metric_inputs(logits)

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return self.head.describe(logits)
