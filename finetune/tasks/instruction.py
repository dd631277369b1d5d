"""Instruction tuning: conversations (see instructions.py) to tokens, with the loss on the assistant's turns only.

- decoder with a chat template (the tokenizer's own, e.g. SmolLM2-Instruct's): the conversation is rendered by
  `apply_chat_template`; each assistant turn's characters are found by rendering the conversation up to it
  (with and without the turn), and exactly the tokens starting inside those spans are learned, end-of-turn
  token included. Every other token (system, user, role headers) is labelled -100.
- decoder without one: a single prompt and response are `prompt\\nresponse[eos]`; longer conversations are a
  transcript, `User: ...\\nAssistant: ...[eos]`, with every assistant turn learned.
- encoder-decoder: the source is that transcript up to the last assistant turn, the target is that turn.

A sequence longer than `data.max_length` is cut at its end; an example left with nothing to learn (its responses
all past the limit) is skipped and counted, as is an evaluation prompt that does not fit. Evaluation generates
the last assistant turn from everything before it.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from finetune import columns
from finetune.errors import FinetuneError
from finetune.losses import IGNORE
from finetune.tasks.base import batch_rows
from finetune.tasks.seq2seq import FEATURES, Seq2Seq, _bos, _stop_id

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class Instruction(Seq2Seq):
    name = "instruction"

    @property
    def target_limit(self) -> int | None:
        """A decoder's responses share data.max_length with the prompt; they have no limit of their own."""
        return None if self.family == "decoder" else self.max_target_length

    def uses_chat_template(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        """A decoder renders with the tokenizer's chat template unless the recipe turns it off (or there is none)."""
        chosen = self.spec.chat_template
        has = bool(getattr(tokenizer, "chat_template", None))
        if chosen and not has:
            raise FinetuneError("task.chat_template: the tokenizer has no chat template; set it to false")
        return self.family == "decoder" and has and chosen is not False

    def format(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list]:
        """Training conversations: every assistant turn learned."""
        return self._encode_rows(batch, tokenizer, max_length, evaluation=False)

    def format_eval(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list]:
        """Evaluation conversations: the last assistant turn generated and judged, per task (`group`)."""
        return self._encode_rows(batch, tokenizer, max_length, evaluation=True)

    def format_inputs(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, list]:
        """Prediction rows: a `prompt` column (one user turn) or `messages` (a conversation to answer)."""
        rows = batch_rows(batch)
        conversations = [r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}] for r in rows]
        empty = {"role": "assistant", "content": ""}
        return self._encode_rows({"messages": [[*m, empty] for m in conversations]}, tokenizer, max_length, None)

    def _encode_rows(
        self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int, evaluation: bool | None
    ) -> dict[str, list]:
        keys = [*FEATURES, columns.ORIGIN, *([columns.REFERENCES, columns.GROUP] if evaluation else [])]
        features: dict[str, list] = {key: [] for key in keys}
        for row in batch_rows(batch):
            encoded = self.encode_conversation(row["messages"], tokenizer, max_length, evaluation)
            encoded[columns.ORIGIN] = row.get("source", "")
            if evaluation:
                encoded[columns.REFERENCES], encoded[columns.GROUP] = row[columns.REFERENCES], row["task"]
            for key in keys:
                features[key].append(encoded[key])
        return features

    def encode_conversation(
        self, messages: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int, evaluation: bool | None
    ) -> dict[str, Any]:
        """One conversation's ids and labels (every assistant turn in training, the last one at evaluation, none
        for prediction), its untruncated lengths, and why it is skipped ("" when it is not)."""
        if self.family == "encoder-decoder":
            source = transcript(messages[:-1], None)
            target = messages[-1]["content"] if evaluation is not None else None
            encoded = self.encode_pair(source, target, tokenizer, max_length)
            encoded[columns.TARGET_CUT] = encoded[columns.TARGET_LENGTH] > self.max_target_length
            return encoded
        text, turns = self.render(messages, tokenizer)
        reply = turns[-1][0]  # where the last assistant turn starts: generation starts there
        spans = turns if evaluation is False else turns[-1:] if evaluation else []  # eval judges the last turn
        if not tokenizer.is_fast:
            raise FinetuneError("model.name: instruction tuning finds the response tokens with a fast tokenizer")
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = _bos(tokenizer) * (not self.uses_chat_template(tokenizer)) + encoded["input_ids"]
        offsets = [(-1, 0)] * (len(ids) - len(encoded["input_ids"])) + list(encoded["offset_mapping"])
        # a token belongs to a response when it overlaps it (" Blue" after "Assistant:" carries its space)
        trained = [any(start < b and end > a for a, b in spans) for start, end in offsets]
        prompt_length = sum(end <= reply for _, end in offsets)
        labels = [token if learn else IGNORE for token, learn in zip(ids, trained)]
        target_length, total_length, skip = sum(trained), len(ids), ""
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            if evaluation is not False and prompt_length >= max_length:
                skip = "prompt longer than data.max_length"
            elif evaluation is False and all(label == IGNORE for label in labels):
                skip = "nothing to learn within data.max_length"
        if evaluation is None:  # prediction: the prompt only
            ids, labels = ids[:prompt_length], [IGNORE] * min(prompt_length, len(ids))
        kept = sum(label != IGNORE for label in labels)
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": labels if evaluation is not None else [],
            columns.PROMPT_LENGTH: min(prompt_length, len(ids)),
            columns.SOURCE_LENGTH: prompt_length,
            columns.TARGET_LENGTH: target_length,
            columns.TOTAL_LENGTH: total_length,
            columns.TARGET_CUT: kept < target_length,
            columns.SKIP: skip,
        }

    def render(self, messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character spans of its assistant turns (each with its end token)."""
        if not self.uses_chat_template(tokenizer):
            return render_plain(messages, tokenizer)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not upto.startswith(before):
                raise FinetuneError(
                    "task.chat_template: the tokenizer's chat template renders an assistant turn differently once it "
                    "is answered, so the response cannot be told apart; set task.chat_template: false"
                )
            spans.append((len(before), len(upto)))
        return tokenizer.apply_chat_template(messages, tokenize=False), spans


def transcript(messages: list[dict], eos: str | None) -> str:
    """A conversation as plain text: one user turn alone as it is, else `Role: text` lines; `eos` ends each
    assistant turn."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    end = eos or ""
    return "\n".join(
        f"{ROLE_NAMES[m['role']]}: {m['content']}{end if m['role'] == 'assistant' else ''}" for m in messages
    )


def render_plain(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """`prompt\\nresponse[eos]` for one exchange, else a `Role: text` transcript; the assistant turns' spans."""
    eos = tokenizer.convert_ids_to_tokens(_stop_id(tokenizer))
    if len(messages) == 2 and messages[0]["role"] == "user":
        prompt = messages[0]["content"] + "\n"
        return prompt + messages[1]["content"] + eos, [(len(prompt), len(prompt) + len(messages[1]["content"] + eos))]
    text, spans = "", []
    for message in messages:
        head = f"{ROLE_NAMES[message['role']]}: "
        if message["role"] == "assistant":
            spans.append((len(text) + len(head), len(text) + len(head) + len(message["content"]) + len(eos)))
            text += head + message["content"] + eos + "\n"
        else:
            text += head + message["content"] + "\n"
    return text, spans
