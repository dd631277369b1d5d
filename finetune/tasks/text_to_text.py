"""Text to text, as T5 does it: the row becomes a source text (the task prefix, then each field as `name: text`)
and the model learns to write the right target (teacher-forced cross-entropy on its tokens):

    rte sentence1: A man plays a guitar. sentence2: Someone plays music.   ->   entailment

The targets are the class words (`task.verbalizer`, default the class names) or, for multiple choice, the
row's own candidates. Every target is scored under the model by the sum of its tokens' log-probabilities
(constrained scoring), so a prediction is always one of them; similarity scores both orderings of the pair
and adds their log-probabilities. Classes train with T5's loss, teacher-forced cross-entropy on the right
word's tokens; multiple choice with GPT-1's, the softmax over the candidates' scores and cross-entropy on the
right one (learning to write whole answers would teach the ranking only indirectly). `eval_loss` is that
softmax's cross-entropy for every task type.

Each (source, target) pair is one row of a single forward call, so the encoder reads a source once per
target (k times one pass's encoder work, small for class words); in exchange the call is an ordinary
forward that DDP, FSDP and mixed precision handle as they handle any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerBase

from finetune.batching import group_mask, pad_groups
from finetune.columns import CHOICE_MASK, TOTAL_LENGTH
from finetune.fields import get_field, with_field
from finetune.losses import Loss, example_loss
from finetune.specs import TaskSpec
from finetune.tasks.base import Task, batch_rows, cut_text, untruncated_length
from finetune.tasks.classification import Classification
from finetune.tasks.multiple_choice import MultipleChoice


class TextToText(Task):
    name = "text_to_text"
    group_name = "source"
    problem_type = None
    model_class = AutoModelForSeq2SeqLM

    def __init__(self, spec: TaskSpec, labels: list[str] | None, *args: Any, **kwargs: Any) -> None:
        candidates = spec.predicts == "candidate"
        self.head = MultipleChoice(spec, None) if candidates else Classification(spec, labels)
        super().__init__(spec, labels, *args, **kwargs)

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 1

    @property
    def class_words(self) -> list[str]:
        """The target written for each class, in class-id order."""
        words = self.spec.verbalizer or {}
        return [words.get(name, name).strip() for name in self.labels]

    def sources(self, row: dict[str, Any]) -> list[str]:
        """The source text(s) of one row: one, or both orderings of a similarity pair (names keep their places)."""
        return [around(text) for text, around in self._parts(row)]

    def _parts(self, row: dict[str, Any]) -> list[tuple[str, Callable[[str], str]]]:
        """Each source as the text `task.truncate` cuts (the first text, or `task.truncate_field`) and the source
        written around it."""
        prefix = [self.spec.prefix] if self.spec.prefix else []
        if self.spec.predicts == "candidate":
            field = self.spec.truncate_field
            if field is None:
                return [(self.spec.context_of(row), lambda text: " ".join([*prefix, text]))]

            def around(text: str) -> str:
                return " ".join([*prefix, self.spec.context_of(with_field(row, field, text))])

            return [(str(get_field(row, field)), around)]
        paths = [path for path in (self.spec.text_a, self.spec.text_b) if path]
        names, texts = [path.split(".")[-1] for path in paths], [str(get_field(row, path)) for path in paths]

        def source(rest: list[str]) -> Callable[[str], str]:
            return lambda first: " ".join([*prefix, *(f"{n}: {t}" for n, t in zip(names, [first, *rest]))])

        orderings = [texts, texts[::-1]] if self.spec.symmetric else [texts]
        return [(ordering[0], source(ordering[1:])) for ordering in orderings]

    def _encode(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, text: str, around: Callable[[str], str]
    ) -> tuple[dict[str, list[int]], int]:
        """One source encoded to fit `max_length`, `text` cut on the side `task.truncate` names (the tokenizer cuts
        the source's end by default), and the whole source's token count."""
        whole = around(text)
        encoded = tokenizer(whole, truncation=True, max_length=max_length)
        total = untruncated_length(tokenizer, [whole], encoded["input_ids"], max_length)
        if total <= max_length or (self.spec.truncate == "end" and getattr(self.spec, "truncate_field", None) is None):
            return encoded, total
        tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        keep = len(tokens["input_ids"]) - (total - max_length)
        if keep < 1:  # the rest alone does not fit: the tokenizer cuts the end
            return encoded, total
        cut = around(cut_text(text, tokens["offset_mapping"], keep, self.spec.truncate))
        return tokenizer(cut, truncation=True, max_length=max_length), total

    def format(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list]:
        """Each row: its source(s) as `input_ids` (S sequences), its k targets as `target_ids`, the right one's index.

        >>> task.format({"sentence": ["a fine film"], "label": ["1"]}, t5_tokenizer, 16)  # doctest: +SKIP
        {'input_ids': [[[3, 7, 7, 204, 7142, 10, 3, 9, 1399, 814, 1]]], 'attention_mask': [[[1, ...]]],
         'target_ids': [[[2841, 1], [1465, 1]]], 'labels': [1]}
        """
        features: dict[str, list] = {"input_ids": [], "attention_mask": [], "target_ids": [], TOTAL_LENGTH: []}
        label_column = self.spec.label.split(".")[0]
        class_targets = None if self.labels is None else self._tokenize_targets(tokenizer, self.class_words, max_length)
        for number, row in enumerate(batch_rows(batch)):
            encoded, totals = zip(*(self._encode(tokenizer, max_length, t, around) for t, around in self._parts(row)))
            features["input_ids"].append([e["input_ids"] for e in encoded])
            features[TOTAL_LENGTH].append(list(totals))
            features["attention_mask"].append([e["attention_mask"] for e in encoded])
            if self.labels is None:  # multiple choice: the row's own candidates
                texts, _ = self.spec.candidates_of(row)
                features["target_ids"].append(self._tokenize_targets(tokenizer, texts, max_length))
            else:
                features["target_ids"].append(class_targets)
            if label_column in row:
                features.setdefault("labels", []).append(self.encode_label(row, number))
        return features

    @staticmethod
    def _tokenize_targets(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
        return [tokenizer(text_target=t, truncation=True, max_length=max_length)["input_ids"] for t in texts]

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> TextToTextCollator:
        return TextToTextCollator(tokenizer.pad_token_id, pad_to_multiple_of)

    def token_counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each (source, target) pair is a row: the sources once per candidate, the targets once per source."""
        sources, targets = batch["input_ids"], batch["target_ids"]  # (B, S, L), (B, k, T)
        (s, k), candidates = (sources.shape[1], targets.shape[1]), batch[CHOICE_MASK].sum(-1)  # (B,)
        real = (batch["attention_mask"].sum((1, 2)) * candidates).sum() + batch["target_mask"].sum() * s
        return torch.stack([real, torch.tensor(sources.numel() * k + targets.numel() * s, device=sources.device)])

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Loss | None, torch.Tensor]:
        sources, source_mask = batch["input_ids"], batch["attention_mask"]  # (B, S, L)
        targets, target_mask = batch["target_ids"], batch["target_mask"]  # (B, k, T)
        (b, s, length), (k, t) = sources.shape, targets.shape[1:]
        # one ordinary forward call (as DDP, FSDP and autocast need): each (source, target) pair is a row
        source_ids = sources.view(b, s, 1, length).expand(b, s, k, length).reshape(b * s * k, length)
        memory_mask = source_mask.view(b, s, 1, length).expand(b, s, k, length).reshape(b * s * k, length)
        target_ids = targets.view(b, 1, k, t).expand(b, s, k, t).reshape(b * s * k, t)
        token_mask = target_mask.view(b, 1, k, t).expand(b, s, k, t).reshape(b * s * k, t)
        output = model(
            input_ids=source_ids,
            attention_mask=memory_mask,
            labels=target_ids.masked_fill(token_mask == 0, -100),  # decoder inputs are these, shifted right
        )
        logprobs = torch.log_softmax(output.logits.float(), dim=-1)  # (B*S*k, T, V)
        token_logprobs = logprobs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1) * token_mask  # (B*S*k, T)
        scores = token_logprobs.sum(-1).view(b, s, k).sum(1)  # (B, k): orderings add
        scores = scores.masked_fill(~batch[CHOICE_MASK], float("-inf"))
        labels = batch.get("labels")
        if labels is None:
            return None, scores
        if self.spec.predicts == "candidate":  # GPT-1's loss: softmax over the candidates' scores
            return example_loss(self.example_losses(scores, labels)), scores
        # classes: teacher-forced cross-entropy on the right class word's tokens (T5's loss), per token
        right = scores.gather(1, labels.view(-1, 1)).squeeze(1)  # (B,)
        tokens = target_mask.sum(-1).gather(1, labels.view(-1, 1)).squeeze(1) * s  # (B,)
        return example_loss(-right / tokens), scores

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return self.head.describe(logits)

    @property
    def pipeline_tag(self) -> str:
        return "text2text-generation"


class TextToTextCollator:
    """Pads sources to (B, S, L) and targets to (B, k, T); `target_mask` marks target tokens, `choice_mask` real
    targets (multiple choice rows may have fewer candidates).

    >>> c = TextToTextCollator(pad_token_id=0)
    >>> b = c([{"input_ids": [[5, 6, 1]], "attention_mask": [[1, 1, 1]], "target_ids": [[7, 1], [8, 9, 1]]}])
    >>> b["target_ids"].tolist(), b["target_mask"].tolist(), b["choice_mask"].tolist()
    ([[[7, 1, 0], [8, 9, 1]]], [[[1, 1, 0], [1, 1, 1]]], [[True, True]])
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0}
        batch = pad_groups(features, ["input_ids", "attention_mask"], pads, self.pad_to_multiple_of)
        targets = [
            {"target_ids": f["target_ids"], "target_mask": [[1] * len(x) for x in f["target_ids"]]} for f in features
        ]
        batch.update(
            pad_groups(targets, ["target_ids", "target_mask"], {"target_ids": self.pad_token_id, "target_mask": 0})
        )
        batch["target_mask"] = batch["target_mask"] * group_mask(features, "target_ids").unsqueeze(-1)
        batch[CHOICE_MASK] = group_mask(features, "target_ids")
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch
