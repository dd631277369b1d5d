"""Multiple choice, as in GPT-1: each candidate k is scored as `[start] context [delim] answer_k [extract]`
by one linear layer; a softmax over the example's own candidates, cross-entropy on the right one.

Examples may have different numbers of candidates (ARC has 3 to 5); padded candidates are masked out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from finetune.batching import GroupCollator
from finetune.columns import CHOICE_MASK, TOTAL_LENGTH
from finetune.fields import get_field, with_field
from finetune.tasks.base import Task, batch_rows, cut_text, softmax


class MultipleChoice(Task):
    name = "multiple_choice"
    group_name = "candidate"
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
            texts, _ = self.spec.candidates_of(row)
            context, removed = self._context(row, texts, tokenizer, max_length)
            pairs = [self.encode(tokenizer, max_length, context, text) for text in texts]
            for pair in pairs:
                pair[TOTAL_LENGTH] += removed
            for key in pairs[0]:
                features.setdefault(key, []).append([pair[key] for pair in pairs])  # k sequences
            if self.spec.label.split(".")[0] in row:
                features.setdefault("labels", []).append(self.encode_label(row, number))
        return features

    def _context(
        self, row: dict[str, Any], texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> tuple[str, int]:
        """The row's context and the tokens taken out of it: with `task.truncate_field`, that field shortened
        (on the side `task.truncate` names) so that the rest of the template and the longest candidate fit."""
        field = self.spec.truncate_field
        if field is None:
            return self.spec.context_of(row), 0

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        value = str(get_field(row, field))
        rest = count(self.spec.context_of(with_field(row, field, ""))) + max(map(count, texts))
        keep = max_length - rest - self.special_tokens(tokenizer, pair=True)
        tokens = tokenizer(value, add_special_tokens=False, return_offsets_mapping=True)
        if len(tokens["input_ids"]) <= keep or keep < 1:
            return self.spec.context_of(row), 0
        cut = cut_text(value, tokens["offset_mapping"], keep, self.spec.truncate)
        return self.spec.context_of(with_field(row, field, cut)), len(tokens["input_ids"]) - keep

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> GroupCollator:
        return GroupCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(B, k, L) for an encoder's multiple-choice head; other heads score one sequence: (B*k, L), and a decoder's
        auxiliary LM loss reads only the real candidates (`lm_rows`), not the copies that pad an example."""
        inputs = {k: v for k, v in batch.items() if k not in ("labels", CHOICE_MASK)}
        if self.family == "encoder":
            return inputs
        inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
        if self.aux_lm:
            inputs["lm_rows"] = batch[CHOICE_MASK].flatten()
        return inputs

    def scores(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch[CHOICE_MASK]
        return logits.view(mask.shape).masked_fill(~mask, float("-inf"))  # (B, k): padding never wins

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"answer": int(p.argmax()), "probabilities": [round(float(x), 6) for x, s in zip(p, row) if np.isfinite(s)]}
            for p, row in zip(softmax(logits), logits)
        ]
