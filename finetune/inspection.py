"""`finetune inspect`: formatted examples as the model will see them, special tokens and layout visible."""

from __future__ import annotations

import shutil
from typing import Any

from transformers import PreTrainedTokenizerBase

from finetune.columns import PROMPT_LENGTH, TOTAL_LENGTH
from finetune.tasks import Task

LAYOUT_ROWS = ("token_type_ids", "attention_mask")


def render_example(index: int, features: dict[str, Any], tokenizer: PreTrainedTokenizerBase, task: Task) -> str:
    """One example: a header with its label, then columns of token / token type / attention, wrapped to the terminal.
    An example of several sequences (similarity's two orderings, multiple choice's candidates) shows each in turn.

    >>> example = {"input_ids": [101, 7592, 102], "attention_mask": [1, 1, 1], "labels": 1}
    >>> print(render_example(0, example, tok, task))  # doctest: +SKIP
    example 0: 3 tokens, label positive (id 1)
      token     [CLS] hello [SEP]
      attention 1     1     1
    """
    width = shutil.get_terminal_size((120, 20)).columns
    if task.spec.generates:
        return _render_seq2seq(index, features, tokenizer, task, width)
    if task.spec.predicts == "tokens":
        return _render_block(index, features, tokenizer, task, width)
    ids = features["input_ids"]
    grouped = bool(ids) and isinstance(ids[0], list)
    sequences = range(len(ids)) if grouped else [None]
    sizes = [len(ids[i]) for i in sequences] if grouped else [len(ids)]
    totals = features.get(TOTAL_LENGTH)  # tokens before truncation to data.max_length, when kept
    cut = (
        [t > n for t, n in zip(totals if grouped else [totals], sizes)] if totals is not None else [False] * len(sizes)
    )
    header = f"example {index}: {' + '.join(map(str, sizes))} tokens, {_label_text(features.get('labels'), task)}"
    if not grouped and cut[0]:
        header += f" (TRUNCATED from {totals} tokens)"
    lines = [header]
    for i in sequences:
        layout = {
            name: features[name] if i is None else features[name][i]
            for name in ("input_ids", *LAYOUT_ROWS)
            if name in features
        }
        if grouped:
            lines.append(f" {task.group_name} {i}:" + (f" (TRUNCATED from {totals[i]} tokens)" if cut[i] else ""))
        rows = {"token": tokenizer.convert_ids_to_tokens(layout.pop("input_ids"))}
        rows.update({name.removesuffix("_ids").replace("attention_mask", "attention"): v for name, v in layout.items()})
        lines += _columns(rows, width=width)
    if "target_ids" in features:  # text to text: the targets scored, the right one marked with *
        right = features.get("labels")
        targets = [tokenizer.decode(ids, skip_special_tokens=True) for ids in features["target_ids"]]
        lines.append("  targets  " + " | ".join(f"{t}*" if i == right else t for i, t in enumerate(targets)))
    return "\n".join(lines)


def _render_block(
    index: int, features: dict[str, Any], tokenizer: PreTrainedTokenizerBase, task: Task, width: int
) -> str:
    """A language-modelling block: its tokens as the model reads them (a training block masked or corrupted as the
    collator would, with a seed of its own) and where the loss reads a label: the original token under a mask, the
    next token for causal LM; span corruption's decoder target follows.

    >>> print(render_example(0, example, tok, masked_lm_task))  # doctest: +SKIP
    example 0: block of 7 tokens, 1 masked
      token  [CLS] a [MASK] film [SEP]
      target .     . fine   .    .
    """
    if "labels" not in features:  # a training block: masked when it is drawn
        features = task.collator(tokenizer, None).fixed(features)
    ids, labels = features["input_ids"], features["labels"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if task.spec.objective == "causal":
        head = f"example {index}: block of {len(ids)} tokens, {len(ids) - 1} predicted from the ones before"
        return "\n".join([head, *_columns({"token": tokens}, width=width)])
    if task.spec.objective == "masked":
        targets = [tokenizer.convert_ids_to_tokens(t) if t != -100 else "." for t in labels]
        head = f"example {index}: block of {len(ids)} tokens, {sum(t != -100 for t in labels)} masked"
        return "\n".join([head, *_columns({"token": tokens, "target": targets}, width=width)])
    lines = [f"example {index}: corrupted block of {len(ids)} tokens, target {len(labels)} tokens"]
    lines += _columns({"token": tokens}, width=width)
    lines.append("  decoder target (loss on every token):")
    return "\n".join(lines + _columns({"token": tokenizer.convert_ids_to_tokens(labels)}, width=width))


def _render_seq2seq(
    index: int, features: dict[str, Any], tokenizer: PreTrainedTokenizerBase, task: Task, width: int
) -> str:
    """A seq2seq or instruction example: the prompt generation starts from and the learned text, then the tokens
    with a `loss` row (1: the loss reads this position's label, 0: masked to -100); an encoder-decoder's target
    tokens follow in their own block.

    >>> print(render_example(0, example, tok, decoder_task))  # doctest: +SKIP
    example 0: 10 tokens (6 masked, 4 learned)
      prompt  fix: he go home fixed:
      target  he goes home
      token   fix : he go home fixed : he goes home [SEP]
      loss    0   0 0  0  0    0     0 1  1    1    1
    """
    ids, labels, prompt = features["input_ids"], features["labels"], features[PROMPT_LENGTH]
    decoder = task.family == "decoder"
    target = [t for t in labels if t != -100]
    head = f"example {index}: {len(ids)} tokens" + (
        f" ({len(ids) - len(target)} masked, {len(target)} learned)" if decoder else f", target {len(target)} tokens"
    )
    lines = [
        head,
        f"  prompt  {tokenizer.decode(ids[:prompt], skip_special_tokens=True)}",
        f"  target  {tokenizer.decode(target, skip_special_tokens=True)}",
    ]
    if decoder:
        rows = {"token": tokenizer.convert_ids_to_tokens(ids), "loss": [int(t != -100) for t in labels]}
        return "\n".join(lines + _columns(rows, width=width))
    lines += _columns({"token": tokenizer.convert_ids_to_tokens(ids)}, width=width)
    lines.append("  decoder target (loss on every token):")
    return "\n".join(lines + _columns({"token": tokenizer.convert_ids_to_tokens(target)}, width=width))


def _label_text(label: Any, task: Task) -> str:
    if label is None:
        return "no label"
    if task.spec.predicts == "candidate":
        return f"answer: candidate {int(label)}"
    if task.labels:
        return f"label {task.labels[int(label)]} (id {int(label)})"
    return f"target {label}"


def _columns(rows: dict[str, list], width: int) -> list[str]:
    """Align each token with its layout values underneath, in blocks that fit `width` characters."""
    names = list(rows)
    label_width = max(len(n) for n in names) + 1
    cells = [[str(row[i]) for row in rows.values()] for i in range(len(rows["token"]))]
    lines, start = [], 0
    while start < len(cells):
        used, end = label_width + 2, start
        while end < len(cells) and (end == start or used + max(map(len, cells[end])) + 1 <= width):
            used += max(map(len, cells[end])) + 1
            end += 1
        for r, name in enumerate(names):
            line = "  " + name.ljust(label_width) + " ".join(c[r].ljust(max(map(len, c))) for c in cells[start:end])
            lines.append(line.rstrip())
        start = end
    return lines
