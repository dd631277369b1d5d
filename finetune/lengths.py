"""Length statistics of formatted seq2seq examples: token counts, truncations and skips per split, and their
histogram as a picture (long inputs and short targets are the usual shape of such data, and cut-off targets
or a prompt limit far above every example are easier seen than read)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict

from finetune.batching import example_length
from finetune.columns import (
    LENGTH_STATS,
    ORIGIN,
    PROMPT_LENGTH,
    SKIP,
    SOURCE_LENGTH,
    TARGET_CUT,
    TARGET_LENGTH,
    TOTAL_LENGTH,
)
from finetune.errors import FinetuneError
from finetune.losses import IGNORE
from finetune.tasks import Task

log = logging.getLogger(__name__)

LENGTHS_PLOT = "lengths.png"


def take_length_report(
    tokenized: DatasetDict, task: Task, max_length: int, keep_lengths: bool = False
) -> tuple[DatasetDict, dict[str, Any]]:
    """Drop skipped examples and the statistics columns; return what they said, per split (for tasks that do not
    generate, their input tokens only, the untruncated counts kept with `keep_lengths`). Raises when a split has
    nothing left."""
    if any(SKIP not in ds.column_names for ds in tokenized.values()):
        return input_token_report(tokenized, keep_lengths)
    report, kept = {}, {}
    for key, ds in tokenized.items():
        reasons, cuts = ds[SKIP], ds[TARGET_CUT]  # each column read once: a Dataset builds it on every access
        skips = Counter(reason for reason in reasons if reason)
        sources, targets, prompts = ds[SOURCE_LENGTH], ds[TARGET_LENGTH], ds[PROMPT_LENGTH]
        report[key] = {
            "examples": len(ds) - sum(skips.values()),
            "skipped": dict(skips),
            "tokens": token_counts(ds, reasons, task.family == "encoder-decoder"),
            "source_tokens": _summary(sources),
            "target_tokens": _summary(targets),
            "truncated_sources": sum(p < s for p, s in zip(prompts, sources)),
            "truncated_targets": sum(cuts),
            "limits": {"max_length": max_length, "max_target_length": task.target_limit},
            "histogram": {"source": sources, "target": targets},
        }
        origins = ds[ORIGIN] if ORIGIN in ds.column_names else []
        if len(set(origins)) > 1:  # a mixture: each source's own shape
            report[key]["per_source"] = {}
            for name in sorted(set(origins)):
                mine = [i for i, origin in enumerate(origins) if origin == name]
                report[key]["per_source"][name] = {
                    "examples": sum(not reasons[i] for i in mine),
                    "skipped": sum(bool(reasons[i]) for i in mine),
                    "truncated_sources": sum(prompts[i] < sources[i] for i in mine),
                    "truncated_targets": sum(cuts[i] for i in mine),
                    "source_tokens": _summary([sources[i] for i in mine]),
                    "target_tokens": _summary([targets[i] for i in mine]),
                    "histogram": {"source": [sources[i] for i in mine], "target": [targets[i] for i in mine]},
                }
        if report[key]["examples"] == 0:
            reasons = ", ".join(f"{n} {why}" for why, n in skips.items())
            raise FinetuneError(f"data.{key}_split: no examples left after skipping rows ({reasons})")
        for why, count in skips.items():
            log.warning("%s split: %d of %d rows skipped (%s)", key, count, len(ds), why)
        kept[key] = (ds.filter(lambda skip: not skip, input_columns=SKIP) if skips else ds).remove_columns(
            [c for c in LENGTH_STATS if c in ds.column_names]
        )
        tokens = report[key]["tokens"]
        log.info(
            "%s split: %d examples; %d sources and %d targets truncated; tokens: %d in, %d kept (%d dropped by "
            "truncation and skipped rows), %d trained",
            key,
            report[key]["examples"],
            report[key]["truncated_sources"],
            report[key]["truncated_targets"],
            tokens["in"],
            tokens["kept"],
            tokens["dropped"],
            tokens["trained"],
        )
    return DatasetDict(kept), report


def input_token_report(tokenized: DatasetDict, keep_lengths: bool = False) -> tuple[DatasetDict, dict[str, Any]]:
    """Tasks that predict classes, scores or candidates: per split, the input tokens of the rows as read and those
    kept after truncation to data.max_length (every ordering and candidate counted); the column dropped."""
    if any(TOTAL_LENGTH not in ds.column_names for ds in tokenized.values()):
        return tokenized, {}
    report, kept = {}, {}
    for key, ds in tokenized.items():
        totals, ids = ds[TOTAL_LENGTH], ds["input_ids"]  # each column read once
        total = sum(sum(n) if isinstance(n, list) else n for n in totals)
        held = sum(example_length(i) for i in ids)
        cut = sum(  # examples with a sequence (an ordering, a candidate) that lost tokens
            any(n > len(s) for n, s in zip(t, i)) if isinstance(t, list) else t > len(i) for t, i in zip(totals, ids)
        )
        report[key] = {
            "examples": len(ds),
            "truncated": cut,
            "tokens": {"in": total, "kept": held, "dropped": total - held},
        }
        log.info(
            "%s split: %d examples, %d truncated to data.max_length; tokens: %d in, %d kept (%d dropped)",
            key,
            len(ds),
            cut,
            total,
            held,
            total - held,
        )
        kept[key] = ds if keep_lengths else ds.remove_columns(TOTAL_LENGTH)
    return DatasetDict(kept), report


def token_counts(ds: Any, skips: list[str], separate_target: bool) -> dict[str, int]:
    """Tokens of a split: in the rows as read (source and target, uncut), kept in the examples after truncation
    and skipping, dropped (the difference) and trained (labelled, in the kept examples)."""
    kept = trained = 0
    for skip, ids, labels in zip(skips, ds["input_ids"], ds["labels"]):
        if not skip:
            kept += len(ids) + (len(labels) if separate_target else 0)
            trained += sum(label != IGNORE for label in labels)
    total = sum(ds[TOTAL_LENGTH])
    return {"in": total, "kept": kept, "dropped": total - kept, "trained": trained}


def token_metrics(report: dict[str, Any]) -> dict[str, int]:
    """The training split's token counts as flat metrics (train_tokens_in, ...); none for tasks without a report."""
    train = report.get("train", {})
    cut = {"train_examples_truncated": train["truncated"]} if "truncated" in train else {}
    return {**{f"train_tokens_{name}": count for name, count in train.get("tokens", {}).items()}, **cut}


def _summary(lengths: list[int]) -> dict[str, float]:
    values = np.array(lengths or [0])
    return {
        "mean": round(float(values.mean()), 1),
        "p50": int(np.percentile(values, 50)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def without_histograms(report: Any) -> Any:
    """The report without the raw lengths, as written to lengths.json."""
    if not isinstance(report, dict):
        return report
    return {k: without_histograms(v) for k, v in report.items() if k != "histogram"}


def plot_lengths(report: dict[str, Any], folder: Path) -> Path | None:
    """Histograms of source and target lengths per split, the limits drawn in; None when there are none."""
    if not any("histogram" in split for split in report.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (title, statistics): each split, then each source of a mixture
    for key, split in report.items():
        panels.append((key, split))
        panels += [(f"{key} / {name}", part) for name, part in split.get("per_source", {}).items()]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), squeeze=False)
    for row, (title, part) in enumerate(panels):
        limits = report[title.split(" / ")[0]]["limits"]
        for col, kind in enumerate(("source", "target")):
            limit = limits["max_length" if kind == "source" else "max_target_length"]
            ax = axes[row][col]
            ax.hist(part["histogram"][kind], bins=40, color="tab:blue" if kind == "source" else "tab:orange")
            if limit is not None:
                ax.axvline(limit, color="red", linestyle="--", label=f"limit {limit}")
                ax.legend(loc="upper right")
            truncated = part[f"truncated_{kind}s"]
            ax.set_title(f"{title}: {kind} tokens ({truncated} of {part['examples']} truncated)", fontsize=9)
            ax.set_xlabel("tokens"), ax.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(folder / LENGTHS_PLOT, dpi=100)
    plt.close(fig)
    return folder / LENGTHS_PLOT
