"""Multiple choice, as in GPT-1: each candidate k is scored as `[start] context [delim] answer_k [extract]`
by one linear layer; a softmax over the example's own candidates, cross-entropy on the right one.

Examples may have different numbers of candidates (ARC has 3 to 5); padded candidates are masked out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from finetune.batching import GroupCollator
from finetune.errors import FinetuneError
from finetune.fields import answer_index, candidates_of, context_of, get_field
from finetune.tasks.base import Task, add_aux_loss, batch_rows, softmax


class MultipleChoice(Task):
    name = "multiple_choice"
    problem_type = None  # the multiple-choice head has one output per candidate; configs accept no name for it

    @property
    def model_class(self) -> type:
        """Encoders have the library's multiple-choice head; other families score each candidate with one output."""
        return AutoModelForMultipleChoice if self.family == "encoder" else AutoModelForSequenceClassification

    @property
    def num_labels(self) -> int:
        return 1  # one score per candidate

    def format(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list]:
        """Each row becomes k (context, candidate) pairs and the index of the right candidate."""
        features: dict[str, list] = {}
        for number, row in enumerate(batch_rows(batch)):
            texts, names = candidates_of(row, self.spec)
            context = context_of(row, self.spec)
            pairs = [self.encode(tokenizer, max_length, context, text) for text in texts]
            for key in pairs[0]:
                features.setdefault(key, []).append([pair[key] for pair in pairs])  # k sequences
            if self.spec.label.split(".")[0] in row:
                value = get_field(row, self.spec.label)
                features.setdefault("labels", []).append(
                    self.check_answer(answer_index(value, names, len(texts)), value, number)
                )
        return features

    @staticmethod
    def check_answer(answer: int | None, value: Any, row: int) -> int:
        """The right candidate's index, or an error naming the row whose label names none."""
        if answer is None:
            raise FinetuneError(f"task.label: {value!r} in row {row} names no candidate")
        return answer

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> GroupCollator:
        return GroupCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def forward(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        labels, mask = batch.get("labels"), batch["choice_mask"]
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "choice_mask")}  # (B, k, L)
        if self.family != "encoder":  # a decoder's or encoder-decoder's head scores one sequence: (B*k, L) -> (B*k, 1)
            inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
        output = model(**inputs)
        scores = output.logits.view(mask.shape).masked_fill(~mask, float("-inf"))  # (B, k): padding never wins
        return add_aux_loss(None if labels is None else self.loss(scores, labels), output), scores

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels.long())

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"answer": int(p.argmax()), "probabilities": [round(float(x), 6) for x, s in zip(p, row) if np.isfinite(s)]}
            for p, row in zip(softmax(logits), logits)
        ]
