"""Seq2seq: a source text to a target text, on encoder-decoders (T5, BART) and decoders alike.

- encoder-decoder: the source (after T5's task prefix) is the encoder's input and the target its labels; the loss
  is the model's teacher-forced cross-entropy on the target tokens (`AutoModelForSeq2SeqLM`).
- decoder: prompt and target are one sequence, `[bos] source target [eos]`, whose prompt positions are labelled
  -100, so the loss is on the target tokens only (`AutoModelForCausalLM`). A prompt longer than
  `data.max_length - data.max_target_length` loses tokens from its middle: its start (an instruction) and its last
  tokens (where a template puts its answer cue, `Summary:`) are kept. The prompt's budget leaves room for the
  longest target whatever the row's own target, so training, evaluation and `finetune predict` cut a prompt alike
  and the model always sees the prompt it will see when it generates.

At evaluation the model writes its output (`generate`: greedy or beam search, a decoder's prompts left-padded), and
the text is judged against the row's references. A training row whose target column holds a list trains on each
of its targets; an evaluation row keeps all of them as references and its loss is on the first.

Rows with an empty source or target are skipped and counted (`skip`), never kept as zero-loss examples.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerBase,
)

from finetune import columns
from finetune.batching import pack_rows, pad_sequences
from finetune.fields import get_field, texts_of
from finetune.lm_loss import causal_lm_loss
from finetune.losses import IGNORE, Loss, count_targets, packed_segments, token_loss
from finetune.recipe.schema import GenerationSpec
from finetune.tasks.base import Task, batch_rows

PROMPT_END = 16  # tokens kept at the end of a decoder prompt that is cut to fit
# what encode_pair returns
FEATURES = ("input_ids", "attention_mask", "labels", columns.PROMPT_LENGTH, *columns.LENGTH_STATS[:-1])


class Seq2Seq(Task):
    name = "seq2seq"
    problem_type = None

    @property
    def model_class(self) -> type:
        return AutoModelForSeq2SeqLM if self.family == "encoder-decoder" else AutoModelForCausalLM

    @property
    def peft_task_type(self) -> str:
        return "SEQ_2_SEQ_LM" if self.family == "encoder-decoder" else "CAUSAL_LM"

    @property
    def target_limit(self) -> int | None:
        """The tokens a target may have of its own (data.max_target_length)."""
        return self.max_target_length

    @property
    def pipeline_tag(self) -> str:
        return "text-generation" if self.family == "decoder" else "text2text-generation"

    @property
    def num_labels(self) -> int:
        return 0

    @property
    def config_overrides(self) -> dict[str, Any]:
        return {}  # the model's own language-modelling head writes the text

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Decoders pad (training batches right, generation prompts left) with their end-of-text token."""
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        return None

    def formatter(self, role: str) -> Any:
        return self.format if role == "train" else self.format_eval

    def format(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list]:
        """Training rows: one example per (source, target); a list-valued target column gives one per target."""
        pairs = []
        for row in batch_rows(batch):
            source = self.spec.source_of(row)
            pairs += [(source, target, None) for target in texts_of(get_field(row, self.spec.label))]
        return self._encode(pairs, tokenizer, max_length)

    def format_eval(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list]:
        """Evaluation rows: one example each, its references kept beside it; the loss is on the first one."""
        pairs = []
        for row in batch_rows(batch):
            references = [r for r in self.spec.references_of(row) if r.strip()]
            pairs.append((self.spec.source_of(row), references[0] if references else "", references))
        return self._encode(pairs, tokenizer, max_length)

    def format_inputs(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list]:
        """Prediction rows: the source only (every row is kept; an empty source generates from the prompt alone)."""
        return self._encode(
            [(self.spec.source_of(row), None, None) for row in batch_rows(batch)], tokenizer, max_length
        )

    def _encode(
        self,
        pairs: list[tuple[str, str | None, list[str] | None]],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
    ) -> dict[str, list]:
        features: dict[str, list] = {key: [] for key in FEATURES}
        if pairs and pairs[0][2] is not None:
            features[columns.REFERENCES] = []
        for source, target, references in pairs:
            encoded = self.encode_pair(source, target, tokenizer, max_length)
            for key, value in encoded.items():
                features[key].append(value)
            if columns.REFERENCES in features:
                features[columns.REFERENCES].append(references)
        return features

    def encode_pair(
        self, source: str, target: str | None, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, Any]:
        """One example's ids and labels, its untruncated lengths, and why it is skipped ("" when it is not); a
        decoder's prompt is cut to leave room for the longest target (see the module docstring)."""
        skip = (
            "empty source"
            if not source.strip()
            else "empty target"
            if target is not None and not target.strip()
            else ""
        )
        if self.family == "encoder-decoder":
            source_ids = tokenizer(source)["input_ids"]
            target_ids = tokenizer(text_target=target)["input_ids"] if target is not None else []
            input_ids = _cut(source_ids, max_length, tokenizer, source)
            labels = _cut(target_ids, self.max_target_length, tokenizer, target, text_target=True)
            prompt_length = len(input_ids)
        else:
            source_ids = _bos(tokenizer) + tokenizer(source, add_special_tokens=False)["input_ids"]
            target_ids = (
                tokenizer(target, add_special_tokens=False)["input_ids"] + [_stop_id(tokenizer)]
                if target is not None
                else []
            )
            target_part = target_ids[: self.max_target_length]
            prompt = _cut_middle(source_ids, max_length - self.max_target_length)
            input_ids = prompt + target_part
            labels = [IGNORE] * len(prompt) + target_part
            prompt_length = len(prompt)
        return {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": labels,
            columns.PROMPT_LENGTH: prompt_length,
            columns.SOURCE_LENGTH: len(source_ids),
            columns.TARGET_LENGTH: len(target_ids),
            columns.TOTAL_LENGTH: len(source_ids) + len(target_ids),
            columns.TARGET_CUT: len(target_ids) > self.max_target_length,
            columns.SKIP: skip,
        }

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> Any:
        if self.packing and self.family == "decoder":
            return PackingCollator(tokenizer.pad_token_id, self.packing)
        return GenerationCollator(tokenizer.pad_token_id, self.family == "decoder", pad_to_multiple_of)

    def loss_items(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The target tokens the loss reads (a decoder's first position predicts nothing)."""
        return {"task": count_targets(batch["labels"], shift=self.family == "decoder")}

    def token_counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inputs' tokens and, for an encoder-decoder, the decoder's (its targets)."""
        counts = super().token_counts(batch)
        if self.family == "decoder":  # the targets are part of the inputs
            return counts
        labels = batch["labels"]
        return counts + torch.stack([labels.ne(IGNORE).sum(), torch.tensor(labels.numel(), device=labels.device)])

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Loss, torch.Tensor | None]:
        """The cross-entropy summed over the target tokens, and an encoder-decoder's logits (None for a decoder:
        its logits are made for the target positions only)."""
        labels, segments = batch["labels"], None
        if self.family == "decoder":
            if "position_ids" in batch:  # packed: positions restarting per example make the causal mask
                # block-diagonal (transformers builds it only without an attention mask and without a cache)
                inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
                segments = packed_segments(batch["position_ids"])
            else:
                inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            return causal_lm_loss(model, inputs, labels, segments=segments)
        # the decoder reads the labels shifted right, given as its inputs: the model's own loss is not needed
        starts = getattr(model, "module", model).prepare_decoder_input_ids_from_labels(labels=labels)
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=starts)
        return token_loss(output.logits, labels, shift=False), output.logits

    @torch.no_grad()
    def generate(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], spec: GenerationSpec, tokenizer
    ) -> torch.Tensor:
        """The generated tokens of each example (B, T), without the prompt, padded with the pad token."""
        prompts, mask = batch["generation_input_ids"], batch["generation_attention_mask"]
        output = model.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=spec.max_new_tokens,
            num_beams=spec.num_beams,
            length_penalty=spec.length_penalty,
            no_repeat_ngram_size=spec.no_repeat_ngram_size,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=_stop_id(tokenizer),
        )
        return output[:, prompts.shape[1] :] if self.family == "decoder" else output

    def describe(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{"prediction": text} for text in texts]


def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The begin-of-sequence token when the tokenizer starts its own encodings with one (Llama does, GPT-2 not)."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def _stop_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends a decoder's target, and generation: end-of-text (a BERT vocabulary's [SEP])."""
    stop = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return stop if stop is not None else tokenizer.pad_token_id


def _cut(ids: list[int], limit: int, tokenizer: PreTrainedTokenizerBase, text: str | None, text_target=False) -> list:
    """An encoder-decoder sequence cut to `limit` tokens by its tokenizer (which keeps the final eos)."""
    if len(ids) <= limit or text is None:
        return ids
    key = "text_target" if text_target else "text"
    return tokenizer(**{key: text}, truncation=True, max_length=limit)["input_ids"]


def _cut_middle(ids: list[int], limit: int) -> list[int]:
    """`ids` cut to `limit` tokens from the middle: the start and the last PROMPT_END tokens are kept."""
    if len(ids) <= limit:
        return ids
    end = min(PROMPT_END, limit // 2)
    return ids[: limit - end] + (ids[-end:] if end else [])


class GenerationCollator:
    """Pads a batch for the teacher-forced loss (right: input ids with pad, labels with -100) and, for
    generation, the prompts: a decoder's prompt-only ids padded on the left, an encoder-decoder's sources.

    >>> c = GenerationCollator(pad_token_id=0, decoder=True)
    >>> b = c([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "prompt_length": 1},
    ...        {"input_ids": [8, 9], "attention_mask": [1, 1], "labels": [-100, 9], "prompt_length": 1}])
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["generation_input_ids"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[-100, 6, 7], [-100, 9, -100]], [[5], [8]])
    """

    def __init__(self, pad_token_id: int, decoder: bool, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.decoder, self.pad_to_multiple_of = pad_token_id, decoder, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": pad_sequences([f["input_ids"] for f in features], self.pad_token_id, self.pad_to_multiple_of),
            "attention_mask": pad_sequences([f["attention_mask"] for f in features], 0, self.pad_to_multiple_of),
        }
        if features[0].get("labels"):
            batch["labels"] = pad_sequences([f["labels"] for f in features], IGNORE, self.pad_to_multiple_of)
        if self.decoder:
            prompts = [f["input_ids"][: f[columns.PROMPT_LENGTH]] for f in features]
            batch["generation_input_ids"] = pad_sequences(
                prompts, self.pad_token_id, self.pad_to_multiple_of, left=True
            )
            batch["generation_attention_mask"] = pad_sequences(
                [[1] * len(p) for p in prompts], 0, self.pad_to_multiple_of, left=True
            )
        else:
            batch["generation_input_ids"], batch["generation_attention_mask"] = (
                batch["input_ids"],
                batch["attention_mask"],
            )
        return batch


class PackingCollator:
    """The batch's examples packed into rows of `width` tokens without padding between them (`batching.pack_rows`:
    positions restart per example, so attention stays within it), plus left-padded prompts for generation."""

    def __init__(self, pad_token_id: int, width: int) -> None:
        self.pad_token_id, self.width = pad_token_id, width
        self.prompts = GenerationCollator(pad_token_id, decoder=True)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prompts = self.prompts(features)
        if not features[0].get("labels"):  # prediction: prompts only, nothing to pack
            return prompts
        batch = pack_rows(features, self.pad_token_id, self.width)
        batch["generation_input_ids"] = prompts["generation_input_ids"]
        batch["generation_attention_mask"] = prompts["generation_attention_mask"]
        return batch
