"""`finetune inspect`: formatted examples as the model will see them, special tokens and layout visible."""

from __future__ import annotations

import shutil
from typing import Any

from transformers import PreTrainedTokenizerBase

from finetune.tasks import Task

LAYOUT_ROWS = ("token_type_ids", "attention_mask")


def render_example(index: int, features: dict[str, Any], tokenizer: PreTrainedTokenizerBase, task: Task) -> str:
    """One example: a header with its label, then columns of token / token type / attention, wrapped to the terminal.

    >>> example = {"input_ids": [101, 7592, 102], "attention_mask": [1, 1, 1], "labels": 1}
    >>> print(render_example(0, example, tok, task))  # doctest: +SKIP
    example 0: 3 tokens, label positive (id 1)
      token     [CLS] hello [SEP]
      attention 1     1     1
    """
    tokens = tokenizer.convert_ids_to_tokens(features["input_ids"])
    rows = {"token": tokens}
    rows.update(
        {
            name.removesuffix("_ids").replace("attention_mask", "attention"): features[name]
            for name in LAYOUT_ROWS
            if name in features
        }
    )
    lines = [f"example {index}: {len(tokens)} tokens, {_label_text(features.get('labels'), task)}"]
    lines += _columns(rows, width=shutil.get_terminal_size((120, 20)).columns)
    return "\n".join(lines)


def _label_text(label: Any, task: Task) -> str:
    if label is None:
        return "no label"
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
