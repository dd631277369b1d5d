"""What every task type shares: the fields it reads, formatting rows into model inputs, the forward pass."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PreTrainedTokenizerBase

from finetune.columns import CHOICE_MASK, PACKED_REAL, TOTAL_LENGTH
from finetune.fields import get_field, text_field
from finetune.heads import add_gpt1_tokens
from finetune.losses import Loss, count_targets, example_loss, lm_targets
from finetune.specs import TaskSpec


def batch_rows(batch: dict[str, list]) -> list[dict[str, Any]]:
    """A `datasets` batch (columns of values) as a list of rows."""
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


class Task:
    """A task type: formats raw rows, encodes labels, runs the model, and turns outputs into predictions.

    Text tasks encode one text, or a pair with the tokenizer's own pair encoding: for BERT-style
    encoders that is GPT-1's layout with the model's own tokens, `[CLS] a [SEP] b [SEP]`.
    """

    name: str
    problem_type: str | None
    group_name = "ordering"  # what each sequence of a grouped example is (`finetune inspect`)
    model_class = AutoModelForSequenceClassification

    def __init__(
        self,
        spec: TaskSpec,
        labels: list[str] | None,
        family: str = "encoder",
        *,
        max_target_length: int | None = None,
        packing: int = 0,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        """`labels`: the class names where the task predicts classes; `max_target_length`: a generated target's
        token limit (data.max_target_length); `packing`: the width of the rows a decoder's examples are packed
        into per batch (data.max_length; 0: padded, not packed); with
        `tokenizer`, the tokenizer is made ready for the task (GPT-1's tokens for a decoder's task head)."""
        self.spec = spec
        self.labels = labels
        self.family = family
        self.max_target_length = max_target_length
        self.packing = packing
        # a decoder's GPT-1 [start] [delim] [extract] ids
        self.gpt1_ids = self.prepare_tokenizer(tokenizer) if tokenizer is not None else None

    @property
    def config_overrides(self) -> dict[str, Any]:
        """What the model config needs for this task's head: the class count and names."""
        head: dict[str, Any] = {"num_labels": self.num_labels}
        if self.problem_type:
            head["problem_type"] = self.problem_type
        if self.labels:
            head["id2label"] = dict(enumerate(self.labels))
            head["label2id"] = {name: i for i, name in enumerate(self.labels)}
        return head

    peft_task_type: str | None = None  # peft's name for the model's kind, for heads peft knows how to generate with

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, int] | None:
        """Make the tokenizer ready for this task: a decoder's task head reads GPT-1's added tokens (their ids)."""
        return add_gpt1_tokens(tokenizer) if self.family == "decoder" else None

    def prepare_training(
        self, train: Any, tokenizer: PreTrainedTokenizerBase, accelerator: Any, batch_size: int
    ) -> Any:
        """The tokenized training split as training reads it (a distillation adds its teacher's logits)."""
        return train

    def formatting_identity(self) -> tuple:
        """What decides how this task formats rows, for the tokenization cache: its spec, labels, target limit and
        the source of the code that formats them (so that changing it invalidates the cache)."""
        parts = [type(self), type(getattr(self, "head", self))]  # similarity and text to text format through a head
        classes = [cls for part in parts for cls in part.__mro__ if cls.__module__.startswith("finetune.")]
        modules = {inspect.getmodule(cls) for cls in classes} | {inspect.getmodule(get_field)}
        code = "".join(sorted(inspect.getsource(module) for module in modules))
        return self.spec.model_dump(), self.labels, self.max_target_length, code

    def formatter(self, role: str) -> Any:
        """The batched function that formats a split in `role` (train or eval); most tasks format both alike."""
        return self.format

    def format_inputs(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list]:
        """Rows to predict for (`finetune predict`); most tasks format them as training rows without labels."""
        return self.format(batch, tokenizer, max_length)

    @property
    def num_labels(self) -> int:
        raise NotImplementedError

    @property
    def text_fields(self) -> list[str]:
        """The top-level columns a prediction input must have (everything but the label)."""
        return list(dict.fromkeys(path.split(".")[0] for path in self.spec.fields("input").values()))

    @property
    def metric_names(self) -> list[str]:
        return self.spec.metric_names

    def encode_label(self, row: dict[str, Any], number: int) -> int | float:
        """The row's label as the model trains on it (the spec's reader); an error naming row `number` if unreadable."""
        return self.spec.encode_label(row, self.labels, number)

    @property
    def pipeline_tag(self) -> str:
        """The Hub's name for what the model does."""
        return self.spec.pipeline_tag

    def encode_texts(self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
        """One row's text (or pair) as token ids, token types and attention mask."""
        keys = {"task.text_a": self.spec.text_a, "task.text_b": self.spec.text_b}
        texts = [text_field(row, path, key) for key, path in keys.items() if path]
        return self.encode(tokenizer, max_length, *texts)

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, first: str, second: str | None = None
    ) -> dict:
        """GPT-1's input transformation, the only place it is written.

        Encoders use their own tokens: `[CLS] first [SEP] second [SEP]` (the tokenizer's pair encoding).
        Decoders get `[start] first [delim] second [extract]`, truncated longest-first to fit `max_length`
        (`task.truncate: start` or `middle` cuts the first text there instead).
        """
        first, untruncated = self._fit_first(tokenizer, max_length, first, second)
        if self.gpt1_ids is None:
            texts = [first] if second is None else [first, second]
            encoded = dict(tokenizer(*texts, truncation=True, max_length=max_length))
            if self.family == "encoder-decoder":  # BART reads the same input in encoder and decoder; no token types
                encoded.pop("token_type_ids", None)
            encoded[TOTAL_LENGTH] = untruncated or untruncated_length(
                tokenizer, texts, encoded["input_ids"], max_length
            )
            return encoded
        ids = self.gpt1_ids
        a = tokenizer(first, add_special_tokens=False)["input_ids"]
        b = tokenizer(second, add_special_tokens=False)["input_ids"] if second is not None else None
        total = len(a) + (2 if b is None else 3 + len(b))
        a, b = _truncate_longest_first(a, b, max_length - (2 if b is None else 3))
        tokens = [ids["start"], *a, *([ids["delim"], *b] if b is not None else []), ids["extract"]]
        return {"input_ids": tokens, "attention_mask": [1] * len(tokens), TOTAL_LENGTH: untruncated or total}

    def special_tokens(self, tokenizer: PreTrainedTokenizerBase, pair: bool) -> int:
        """The tokens the layout adds around one text or a pair."""
        if self.gpt1_ids is not None:
            return 3 if pair else 2
        return tokenizer.num_special_tokens_to_add(pair=pair)

    def _fit_first(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, first: str, second: str | None
    ) -> tuple[str, int | None]:
        """`task.truncate: start` or `middle`: the first text cut at the token boundary that leaves room for the
        rest, and the input's untruncated token count; unchanged (and None) for `end`, which the tokenizer does."""
        side = getattr(self.spec, "truncate", "end")
        if side == "end":
            return first, None
        other = len(tokenizer(second, add_special_tokens=False)["input_ids"]) if second is not None else 0
        rest = other + self.special_tokens(tokenizer, second is not None)
        tokens = tokenizer(first, add_special_tokens=False, return_offsets_mapping=True)
        total = len(tokens["input_ids"]) + rest
        if total <= max_length or max_length - rest < 1:  # fits, or the second text must be cut too: longest first
            return first, total
        return cut_text(first, tokens["offset_mapping"], max_length - rest, side), total

    def format(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list]:
        """Tokenize a batch of raw rows and attach `labels` when the rows have them.

        >>> task.format({"sentence": ["a fine film"], "label": ["1"]}, tok, 8)  # doctest: +SKIP
        {'input_ids': [[101, 1037, 2986, 2143, 102]], 'token_type_ids': [[0, 0, 0, 0, 0]],
         'attention_mask': [[1, 1, 1, 1, 1]], 'labels': [1]}
        """
        rows = batch_rows(batch)
        encoded = [self.encode_texts(row, tokenizer, max_length) for row in rows]
        features = {key: [e[key] for e in encoded] for key in encoded[0]} if encoded else {}
        if rows and self.spec.label.split(".")[0] in rows[0]:
            features["labels"] = [self.encode_label(r, i) for i, r in enumerate(rows)]
        return features

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> Any:
        """Pads a list of formatted examples into a batch of tensors."""
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    @property
    def aux_lm(self) -> bool:
        """Does a decoder's task head add the auxiliary language-modelling loss (GPT-1)?"""
        return self.gpt1_ids is not None and self.spec.aux_lm_weight > 0

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the model reads from a batch (the labels are the task's to score)."""
        return {k: v for k, v in batch.items() if k not in ("labels", TOTAL_LENGTH)}

    def scores(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's outputs as the task's predictions (B, C)."""
        return logits

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Loss | None, torch.Tensor]:
        """(loss, logits) for a batch; the loss is None when the batch has no labels."""
        output = model(**self.model_inputs(batch))
        logits, labels = self.scores(output.logits, batch), batch.get("labels")
        if labels is None:
            return None, logits
        return example_loss(self.example_losses(logits, labels)).plus(aux_loss(output)), logits

    def loss_items(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The items each loss term of `forward` sums over in this batch: examples, and the auxiliary LM loss's
        tokens; known before the forward pass, so that a step's loss can be divided by the step's items."""
        items = {"task": torch.tensor(len(batch["labels"]), device=batch["labels"].device)}
        if self.aux_lm:
            inputs = self.model_inputs(batch)
            targets = lm_targets(inputs["input_ids"], inputs["attention_mask"], inputs.get("lm_rows"))
            items["lm"] = count_targets(targets, shift=True)
        return items

    def token_counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(2,): the batch's real tokens and the tokens the model computes, padding included (a packed batch
        pads only its rows' ends; a group's padding candidates repeat its first sequence and count as padding)."""
        ids, mask = batch["input_ids"], batch.get("attention_mask", batch.get(PACKED_REAL))
        real = mask if mask is not None else torch.ones_like(ids)
        if CHOICE_MASK in batch:  # (B, k, L) groups
            real = real * batch[CHOICE_MASK].unsqueeze(-1)
        return torch.stack([real.sum(), torch.tensor(ids.numel(), device=ids.device)])

    def example_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task loss of each example (B,)."""
        return F.cross_entropy(logits, labels.long(), reduction="none")

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean task loss over examples (used on gathered evaluation outputs)."""
        return self.example_losses(logits, labels).mean()

    def metric_inputs(self, logits: np.ndarray) -> np.ndarray:
        """Predictions in the form the metrics compare with the labels."""
        return logits.argmax(axis=-1)

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """One readable prediction record per example, for `finetune predict`."""
        raise NotImplementedError


def cut_text(text: str, offsets: list[tuple[int, int]], keep: int, side: str) -> str:
    """`text` cut to its first `keep` tokens (side end), its last (start) or both halves (middle), at the
    characters the tokenizer's offsets give."""
    if side == "end":
        return text[: offsets[keep - 1][1]]
    if side == "start":
        return text[offsets[-keep][0] :]
    head, tail = (keep + 1) // 2, keep // 2
    return text[: offsets[head - 1][1]] + (" " + text[offsets[-tail][0] :] if tail else "")


def untruncated_length(tokenizer: PreTrainedTokenizerBase, texts: list[str], ids: list[int], max_length: int) -> int:
    """A sequence's tokens before truncation to `max_length` (`ids`): tokenized again only when it reached it."""
    return len(tokenizer(*texts, verbose=False)["input_ids"]) if len(ids) >= max_length else len(ids)


def _truncate_longest_first(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Drop tokens from the end of the longer text until both fit in `budget`."""
    a = list(a)
    b = list(b) if b is not None else None
    while len(a) + len(b or []) > budget and (a or b):
        if b is not None and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    return a, b


def aux_loss(output: Any) -> Loss | None:
    """A decoder head's weighted auxiliary LM loss as a loss term, when it computed one."""
    total = output.get("lm_loss_sum") if hasattr(output, "get") else None
    return None if total is None else Loss({"lm": total}, {"lm": output["lm_tokens"]})


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; -inf (masked) entries get probability 0."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
