"""What the baseline scripts share: their common flags, a token-counting collator wrapper and the result file."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

IGNORE = -100  # the label id that no loss is computed on


def parser(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """The flags every baseline takes; `defaults` sets batch_size, lr and the like per script."""
    parsed = argparse.ArgumentParser(description=description)
    parsed.add_argument("--model", required=True, help="checkpoint folder")
    parsed.add_argument("--train", required=True, help="training file")
    parsed.add_argument("--eval", required=True, help="evaluation file")
    parsed.add_argument("--out", required=True, type=Path, help="where RESULT.json goes")
    parsed.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 32))
    parsed.add_argument("--lr", type=float, default=defaults.get("lr", 5e-5))
    parsed.add_argument("--epochs", type=float, default=1.0)
    parsed.add_argument("--seed", type=int, default=42)
    return parsed


class Counting:
    """Wraps a data collator and counts, over the batches it makes, real tokens (attention mask ones, or every
    token of a batch without a mask: padding-free packing) and computed tokens (the padded input ids); with
    `labels`, the labels' non-ignored and padded tokens too (an encoder-decoder's decoder side)."""

    def __init__(self, inner: Callable[[list[dict]], Any], labels: bool = False) -> None:
        self.inner = inner
        self.labels = labels
        self.real = 0
        self.computed = 0

    def __call__(self, features: list[dict]) -> Any:
        batch = self.inner(features)
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else ids.numel()
        self.computed += ids.numel()
        if self.labels:
            self.real += int((batch["labels"] != IGNORE).sum())
            self.computed += batch["labels"].numel()
        return batch


def train_counted(trainer: Any, labels: bool = False) -> tuple[Counting, dict[str, float]]:
    """Train with the trainer's collator wrapped in `Counting` (Trainer reads self.data_collator when it builds the
    train dataloader); the plain collator is put back for evaluation. Returns the counts and train()'s metrics."""
    counting = Counting(trainer.data_collator, labels=labels)
    trainer.data_collator = counting
    output = trainer.train()
    trainer.data_collator = counting.inner
    return counting, output.metrics


def write_result(
    args: argparse.Namespace,
    tool: str,
    mode: str,
    examples: int,
    steps: int,
    train_seconds: float,
    counting: Counting,
    data_seconds: float,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write RESULT.json; samples/s counts the training examples (not packed rows) over train()'s runtime."""
    result = {
        "tool": tool,
        "mode": mode,
        "examples": examples,
        "steps": steps,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(examples * args.epochs / train_seconds, 3),
        "real_tokens": counting.real,
        "computed_tokens": counting.computed,
        "tokens_per_second": round(counting.real / train_seconds, 1),
        "padding_share": round(1 - counting.real / max(counting.computed, 1), 4),
        "data_seconds": round(data_seconds, 3),
        "metrics": {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def trainer_dir(out: Path) -> str:
    """The Trainer's output_dir beside the result file (nothing is saved there: save_strategy is "no")."""
    return str(out.with_name(out.stem + "-trainer"))
