"""Continued pretraining on raw text: each family's own objective (see specs/language_modeling.py).

- causal (decoders): each document is `[bos] text [eos]` cut into blocks of data.max_length tokens, every token
  a target (the loss as seq2seq computes it: logits of the predicting positions only). With data.packing a batch's
  blocks are packed into rows whose positions restart per block, so no block attends to another document.
- masked (encoders): each document is cut into blocks of data.max_length tokens with the tokenizer's own special
  tokens (`[CLS] ... [SEP]`); transformers' `DataCollatorForLanguageModeling` masks them (80-10-10, or whole
  words), the loss on the masked positions.
- span_corruption (encoder-decoders): blocks of data.max_length - 1 tokens; T5's noise (spans of mean length
  `mean_span_length` covering `mask_probability` of the tokens, between kept spans) replaced by one sentinel each,
  the target the sentinels each followed by its span; a tokenizer without sentinels (BART) gets one mask token per
  span and the whole block as its target (BART's text infilling).

Training masks in the collator: fresh masks every epoch, each block's drawn by a generator seeded with the run's
seed, the epoch and the block's index, so that they do not depend on how blocks are batched, split over processes
or skipped on a resume. Evaluation masks once at tokenization, each block seeded by its own ids, so that every
evaluation scores the same positions.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Any

import torch
from datasets import IterableDataset
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
)

from finetune import columns
from finetune.batching import pack_rows, pad_sequences
from finetune.errors import FinetuneError
from finetune.losses import IGNORE, token_loss
from finetune.tasks.base import Task, batch_rows
from finetune.tasks.seq2seq import Seq2Seq, _bos, _stop_id

SENTINELS = 100  # T5's <extra_id_0> .. <extra_id_99>


class LanguageModeling(Seq2Seq):
    name = "language_modeling"

    @property
    def objective(self) -> str:
        return self.spec.objective

    @property
    def model_class(self) -> type:
        return AutoModelForMaskedLM if self.objective == "masked" else super().model_class

    @property
    def peft_task_type(self) -> str | None:
        return None if self.objective == "masked" else super().peft_task_type

    @property
    def pipeline_tag(self) -> str:
        return "fill-mask" if self.objective == "masked" else super().pipeline_tag

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.objective == "masked" and tokenizer.mask_token_id is None:
            raise FinetuneError("task.objective: masked LM needs a tokenizer with a mask token; this one has none")
        if self.objective == "span_corruption" and not sentinel_ids(tokenizer) and tokenizer.mask_token_id is None:
            raise FinetuneError(
                "task.objective: span corruption needs T5's <extra_id_N> sentinels or a mask token (BART's); "
                "this tokenizer has neither"
            )
        return super().prepare_tokenizer(tokenizer)

    def formatter(self, role: str) -> Any:
        return partial(self.format, fixed=role != "train")

    def format(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int, fixed: bool = False
    ) -> dict[str, list]:
        """Documents to blocks; with `fixed` (evaluation), each block masked once, seeded by its own ids."""
        texts = [str(row.get(self.spec.text_a) or "") for row in batch_rows(batch)]
        blocks = [b for text in texts if text.strip() for b in self.blocks(text, tokenizer, max_length)]
        if fixed and self.objective != "causal":
            masker = self.collator(tokenizer, None)
            blocks = [masker.fixed(block) for block in blocks]
        features: dict[str, list] = {key: [b[key] for b in blocks] for key in (blocks[0] if blocks else {})}
        return features

    def blocks(self, text: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict[str, Any]]:
        """One document's blocks of at most `max_length` tokens, as the objective reads them."""
        if self.objective == "causal":
            ids = _bos(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"] + [_stop_id(tokenizer)]
            chunks = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
            return [_block(c, labels=c) for c in chunks if len(c) > 1]  # a lone token predicts nothing
        prefix, suffix = special_frame(tokenizer)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=self.spec.whole_word_masking)
        ids, width = encoded["input_ids"], max_length - len(prefix) - len(suffix)
        found = []
        for start in range(0, len(ids), width):
            if self.objective == "span_corruption":  # corrupted first, then closed by the special tokens
                found.append(_block(ids[start : start + width]))
                continue
            block = _block(prefix + ids[start : start + width] + suffix)
            if self.objective == "masked":
                block["special_tokens_mask"] = tokenizer.get_special_tokens_mask(
                    block["input_ids"], already_has_special_tokens=True
                )
                if self.spec.whole_word_masking:  # the specials' offsets are (0, 0), as the collator expects
                    offsets = [list(o) for o in encoded["offset_mapping"][start : start + width]]
                    block["offset_mapping"] = _wrap(offsets, block["special_tokens_mask"], [0, 0])
            found.append(block)
        return found

    def prepare_training(
        self, train: Any, tokenizer: PreTrainedTokenizerBase, accelerator: Any, batch_size: int
    ) -> Any:
        """Masked and corrupted blocks carry their index (in a stream, their place in the epoch's order), which seeds
        their masks with the run's seed and epoch."""
        if self.objective == "causal":
            return train
        if isinstance(train, IterableDataset):
            return train.map(lambda _, ids: {columns.EXAMPLE_ID: ids}, with_indices=True, batched=True)
        return train.add_column(columns.EXAMPLE_ID, list(range(len(train))))

    def format_inputs(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list]:
        raise FinetuneError(
            "finetune predict: a language_modeling run predicts no labels; score it with finetune eval, or fine-tune "
            "from it (model: its run folder)"
        )

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> Any:
        if self.objective == "causal":
            return BlockCollator(tokenizer.pad_token_id, self.packing, pad_to_multiple_of)
        seed = torch.initial_seed()  # in training, the recipe's (set before the model was built)
        if self.objective == "masked":
            return MaskingCollator(tokenizer, self.spec.mask_probability, self.spec.whole_word_masking, seed)
        return SpanCorruptionCollator(tokenizer, self.spec.mask_probability, self.spec.mean_span_length, seed)

    def token_counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inputs' tokens and, for span corruption, the decoder's (its targets)."""
        return super().token_counts(batch) if self.objective == "span_corruption" else Task.token_counts(self, batch)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, None]:
        """The cross-entropy summed over the target tokens (masked LM: the masked positions)."""
        if self.objective != "masked":
            return super().forward(model, batch)[0], None
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return token_loss(output.logits, batch["labels"], shift=False), None


def _block(ids: list[int], labels: list[int] | None = None) -> dict[str, Any]:
    block = {"input_ids": ids, "attention_mask": [1] * len(ids), columns.TOTAL_LENGTH: len(ids)}
    if labels is not None:
        block["labels"] = list(labels)
    return block


def _wrap(inner: list, special: list[int], filler: Any) -> list:
    """`inner` placed at the non-special positions of a block, `filler` at its special tokens."""
    values = iter(inner)
    return [filler if s else next(values) for s in special]


def special_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text's ids ([CLS] and [SEP]; T5's </s>)."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(inner)] == inner)
    return full[:start], full[start + len(inner) :]


def sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """T5's sentinel token ids in order (<extra_id_0> first); empty for a tokenizer without them."""
    vocab = tokenizer.get_vocab()
    return [vocab[f"<extra_id_{i}>"] for i in range(SENTINELS) if f"<extra_id_{i}>" in vocab]


def _seed(ids: list[int]) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(str(ids).encode()))


class PerExampleMasks:
    """A training collator's generator for each block: seeded by the run's seed, the epoch and the block's index."""

    def __init__(self, seed: int) -> None:
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, feature: dict[str, Any]) -> torch.Generator | None:
        if columns.EXAMPLE_ID not in feature:  # outside a training run: the global generator
            return None
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, feature[columns.EXAMPLE_ID])) % 2**63)


class BlockCollator:
    """Causal LM blocks: packed into rows of `packing` tokens (`batching.pack_rows`, positions restarting per block)
    or, with `packing` 0, right-padded rows; labels -100 on padding."""

    def __init__(self, pad_token_id: int, packing: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.packing, self.pad_to_multiple_of = pad_token_id, packing, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.packing:
            return pack_rows(features, self.pad_token_id, self.packing)
        return _padded(features, self.pad_token_id, self.pad_to_multiple_of)


def _padded(features: list[dict], pad_token_id: int, multiple: int | None = None) -> dict[str, torch.Tensor]:
    """Input ids, attention masks and labels padded on the right."""
    return {
        "input_ids": pad_sequences([f["input_ids"] for f in features], pad_token_id, multiple),
        "attention_mask": pad_sequences([f["attention_mask"] for f in features], 0, multiple),
        "labels": pad_sequences([f["labels"] for f in features], IGNORE, multiple),
    }


class MaskingCollator(PerExampleMasks):
    """Masked LM through transformers' collator: training blocks masked as they are drawn, each by its own
    generator; evaluation blocks (which carry their labels) only padded."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, probability: float, whole_words: bool, seed: int) -> None:
        super().__init__(seed)
        replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_words else {}
        self.mlm = DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=probability, whole_word_mask=whole_words, **replace
        )
        self.pad_token_id, self.whole_words = tokenizer.pad_token_id, whole_words

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" in features[0]:
            return _padded(features, self.pad_token_id)
        if columns.EXAMPLE_ID in features[0]:
            return _padded([self.masked(f, self.generator(f)) for f in features], self.pad_token_id)
        return self.masked_batch(features, None)

    def masked(self, feature: dict[str, Any], generator: torch.Generator | None) -> dict[str, Any]:
        """One block masked by `generator`."""
        batch = self.masked_batch([feature], generator)
        return _block(batch["input_ids"][0].tolist(), batch["labels"][0].tolist())

    def masked_batch(self, features: list[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The blocks padded and masked together by `generator` (None: the global one)."""
        batch = {
            "input_ids": pad_sequences([f["input_ids"] for f in features], self.pad_token_id),
            "attention_mask": pad_sequences([f["attention_mask"] for f in features], 0),
        }
        specials = pad_sequences([f["special_tokens_mask"] for f in features], 1)  # padding is never masked
        offsets = None
        if self.whole_words:
            width = batch["input_ids"].shape[1]
            offsets = torch.tensor(
                [f["offset_mapping"] + [[0, 0]] * (width - len(f["offset_mapping"])) for f in features]
            )
        self.mlm.generator = generator  # None: the seeded global generator
        batch["input_ids"], batch["labels"] = self.mlm.torch_mask_tokens(
            batch["input_ids"], special_tokens_mask=specials, offset_mapping=offsets
        )
        return batch

    def fixed(self, block: dict[str, Any]) -> dict[str, Any]:
        """One evaluation block masked once, seeded by its ids."""
        return self.masked(block, _seed(block["input_ids"]))


def noise_mask(length: int, density: float, mean_span: float, generator: torch.Generator | None = None) -> list[bool]:
    """T5's `random_spans_noise_mask`: about `density` of `length` positions in spans of mean length `mean_span`,
    kept spans between them; the sequence starts with a kept span. At least one token is noise, one kept."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = max(min(round(noise / mean_span), length - noise, SENTINELS), 1)

    def parts(items: int) -> list[int]:  # `items` split at random into `spans` non-empty parts
        cuts = sorted((torch.randperm(items - 1, generator=generator)[: spans - 1] + 1).tolist())
        return [b - a for a, b in zip([0, *cuts], [*cuts, items])]

    mask: list[bool] = []
    for kept, noisy in zip(parts(length - noise), parts(noise)):
        mask += [False] * kept + [True] * noisy
    return mask


def corrupt(ids: list[int], mask: list[bool], sentinels: list[int], mask_id: int | None) -> tuple[list, list]:
    """(inputs, targets) of a block under a noise mask: each noise span becomes one sentinel in the inputs and the
    target is each sentinel then its span (T5); without sentinels, one `mask_id` per span and the block itself as
    the target (BART's text infilling)."""
    inputs, targets, span = [], [], -1
    for i, (token, noisy) in enumerate(zip(ids, mask)):
        starts = noisy and (i == 0 or not mask[i - 1])
        span += starts
        if not noisy:
            inputs.append(token)
        elif starts:
            inputs.append(sentinels[span] if sentinels else mask_id)
            targets += [sentinels[span]] if sentinels else []
        if noisy and sentinels:
            targets.append(token)
    return inputs, (targets if sentinels else list(ids))


class SpanCorruptionCollator(PerExampleMasks):
    """Span corruption of training blocks as they are drawn, each by its own generator (evaluation blocks, which
    carry their labels, are only padded); the tokenizer's special tokens close inputs and targets (T5's </s>;
    BART's <s> ... </s>)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, density: float, mean_span: float, seed: int) -> None:
        super().__init__(seed)
        self.tokenizer, self.density, self.mean_span = tokenizer, density, mean_span
        self.sentinels = sentinel_ids(tokenizer)
        self.prefix, self.suffix = special_frame(tokenizer)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" not in features[0]:
            features = [self.corrupted(f["input_ids"], self.generator(f)) for f in features]
        return _padded(features, self.tokenizer.pad_token_id)

    def corrupted(self, block: list[int], generator: torch.Generator | None) -> dict[str, Any]:
        """A block's text (ids without special tokens) corrupted, then closed by the tokenizer's special tokens."""
        mask = noise_mask(len(block), self.density, self.mean_span, generator) if len(block) > 1 else [False]
        inputs, targets = corrupt(block, mask, self.sentinels, self.tokenizer.mask_token_id)
        return _block(self.prefix + inputs + self.suffix, self.prefix + targets + self.suffix)

    def fixed(self, block: dict[str, Any]) -> dict[str, Any]:
        """One evaluation block corrupted once, seeded by its ids."""
        return self.corrupted(block["input_ids"], _seed(block["input_ids"]))
