"""A recipe made ready to run: checked, its architecture settled, its task built whole and its splits tokenized.

`finetune train` and `finetune inspect` start here; zero-shot evaluation settles the architecture the same way.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from datasets import DatasetDict, IterableDataset
from transformers import PreTrainedTokenizerBase

from finetune import data
from finetune.errors import FinetuneError
from finetune.families import PACKING_ISOLATED
from finetune.lengths import take_length_report
from finetune.model import load_tokenizer, resolve_architecture
from finetune.recipe import Recipe
from finetune.streaming import tokenized_stream
from finetune.tasks import Task, prepare_task
from finetune.validate import Report, architecture_problems, check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What a run starts from. `recipe` is settled: `task.head`, `data.packing` and inferred labels resolved, as
    recipe.yaml records them."""

    recipe: Recipe
    report: Report
    tokenizer: PreTrainedTokenizerBase
    family: str
    task: Task
    splits: dict[str, Any]  # tokenized: train, eval
    data_report: dict[str, Any]  # lengths (seq2seq and instruction), an instruction mixture's sources
    data_seconds: float


def checked(recipe: Recipe) -> Report:
    """The recipe's validation report; its problems raised (one line each), its notes logged."""
    report = check(recipe)
    report.raise_for_problems()
    for note in report.notes:
        log.info("note: %s", note)
    return report


def prepare(
    recipe: Recipe,
    report: Report,
    first: AbstractContextManager[Any] | None = None,
    splits: dict[str, str] | None = None,
    keep_lengths: bool = False,
) -> Prepared:
    """Tokenizer, settled architecture, task and tokenized splits: `splits` by role (default the recipe's train
    and eval splits; the first one read gives inferred class names). `first` (accelerate's `main_process_first`)
    lets one process convert, download and tokenize while the others then read its cache. `keep_lengths` keeps
    each example's untruncated token count (`finetune inspect` marks the truncated ones)."""
    splits = splits or {"train": recipe.data.train_split, "eval": recipe.data.eval_split}
    with first or nullcontext():
        tokenizer = load_tokenizer(recipe.model, report.model)
        recipe, family = settle_architecture(recipe, report)
        started = time.perf_counter()
        task, tokenized, data_report = prepare_data(recipe, tokenizer, family, splits, keep_lengths)
        seconds = time.perf_counter() - started
    if task.labels and recipe.task.has_classes and recipe.task.labels is None:  # inferred: into recipe.yaml
        recipe = recipe.model_copy(update={"task": recipe.task.with_labels(task.labels)})
    return Prepared(recipe, report, tokenizer, family, task, tokenized, data_report, seconds)


def settle_architecture(recipe: Recipe, report: Report) -> tuple[Recipe, str]:
    """The checkpoint's family, and the recipe with `task.head: auto` and `data.packing: auto` resolved (written
    into recipe.yaml)."""
    family, model_type = resolve_architecture(recipe.model, report)
    problems = architecture_problems(recipe, family, model_type)
    if problems:
        raise FinetuneError(*problems)
    if recipe.data.packing == "auto":
        packing = recipe.task.packs and family == "decoder" and model_type in PACKING_ISOLATED
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": packing})})
    settled = recipe.task.settled(family, model_type)
    for key, value in settled:
        if getattr(recipe.task, key) != value:
            log.info("task.%s: %s for %s (%s)", key, value, recipe.model.name, model_type or family)
    return recipe.model_copy(update={"task": settled}), family


def prepare_data(
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    family: str | None,
    splits: dict[str, str],
    keep_lengths: bool = False,
) -> tuple[Task, Any, dict[str, Any]]:
    """Load, check, cap and tokenize the splits (for decoders, GPT-1's tokens join the tokenizer first); also
    the data report: seq2seq and instruction lengths (skipped rows dropped), an instruction mixture's sources."""
    raw, mixture = data.load_splits(recipe, splits)
    first = next(iter(splits))
    task = prepare_task(recipe, data.resolve_labels(recipe, raw[first]), family or "encoder", tokenizer)
    if task.labels is not None and recipe.task.classes_problem(task.labels):
        raise FinetuneError(recipe.task.classes_problem(task.labels))
    if task.labels is not None and "f1" in recipe.task.metric_names:
        average, positive = recipe.task.f1_averaging(task.labels)
        how = f"{average} over the {len(task.labels)} classes"
        if average == "binary":
            how = f"binary on the positive class {task.labels[positive]!r} (id {positive} of {task.labels})"
        log.info("f1: %s", how)
    tokenized, lengths = tokenize_splits(raw, task, tokenizer, recipe, keep_lengths)
    data.log_samples(tokenized[first], tokenizer)
    return task, tokenized, {"lengths": lengths, "mixture": mixture}


def tokenize_splits(
    raw: Any, task: Task, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, keep_lengths: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The splits capped (data.max_*_examples) and tokenized, without skipped rows, and their length report
    (seq2seq; empty for other tasks). `finetune eval` reads a run's split through it with the run's own task. A
    streamed split (data.streaming) is tokenized as it is read, and has no report."""
    streams = {key: ds for key, ds in raw.items() if isinstance(ds, IterableDataset)}
    sized = DatasetDict({key: ds for key, ds in raw.items() if key not in streams})
    tokenized = data.tokenize(
        data.cap_splits(sized, recipe.data, recipe.train.seed), task, tokenizer, recipe.data.max_length
    )
    for key, ds in tokenized.items():
        if len(ds) == 0:  # a causal LM's blocks of one token predict nothing, and are dropped
            raise FinetuneError(
                f"data.max_length: {recipe.data.max_length} leaves no example in the {key} split once tokenized"
            )
    tokenized, report = take_length_report(tokenized, task, recipe.data.max_length, keep_lengths)
    for key, stream in streams.items():
        spec = recipe.data
        tokenized[key] = tokenized_stream(
            stream, task, tokenizer, spec.max_length, recipe.train.seed, spec.shuffle_buffer, keep_lengths
        )
    return tokenized, report


def truncation_notes(recipe: Recipe, report: Report) -> list[str]:
    """`finetune validate --tokens`: per split, the examples that data.max_length (and data.max_target_length)
    cut, as the task formats them for training (a streamed training split is not counted)."""
    notes = []
    for key, found in prepare(recipe, report).data_report["lengths"].items():
        if "truncated" in found:
            tokens = found["tokens"]
            notes.append(
                f"data.max_length: {found['truncated']} of {found['examples']} {key} examples truncated "
                f"({tokens['dropped']} of {tokens['in']} tokens dropped)"
            )
        else:
            notes.append(
                f"data.max_length: {found['truncated_sources']} of {found['examples']} {key} prompts truncated; "
                f"data.max_target_length: {found['truncated_targets']} targets"
            )
    return notes
