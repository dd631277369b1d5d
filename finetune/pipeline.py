"""The stages composed: train, eval and predict. The CLI and the tests call these same functions."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune import data
from finetune.adapters import check_quantization_device, is_adapter_dir
from finetune.engine import Engine, make_accelerator
from finetune.errors import FinetuneError
from finetune.evaluation import evaluate_model, predict_logits
from finetune.export import push_run, write_model_card
from finetune.families import detect_family, read_config, resolve_head
from finetune.footprint import parameter_report, peak_memory, saved_size
from finetune.heads import ExtractTokenModel, add_gpt1_tokens
from finetune.mirrors import resolve_model
from finetune.model import build_model, load_adapter, load_finetuned, load_tokenizer, resolve_architecture
from finetune.plots import plot_training
from finetune.recipe import Recipe, load_recipe
from finetune.recipe.schema import ReaderSpec
from finetune.rundir import (
    METRICS_FILE,
    choose_run_dir,
    find_recipe,
    latest_checkpoint,
    warn_if_changed,
    write_json,
    write_recipe,
)
from finetune.sources import FORMATS_BY_SUFFIX, LocalTables, read_rows
from finetune.tasks import Task, build_task
from finetune.validate import Report, check, head_problems

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run leaves: its folder and its metrics (as in metrics.json)."""

    run_dir: Path
    metrics: dict[str, Any]


def train(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> RunResult:
    """Validate, load data and model, train, evaluate and save: the whole `finetune train`."""
    report = check(recipe)
    report.raise_for_problems()
    for note in report.notes:
        log.info("note: %s", note)
    if recipe.quantize is not None:
        check_quantization_device()
    accelerator = make_accelerator(recipe.train)
    with accelerator.main_process_first():  # one process converts, downloads and tokenizes; the rest read its cache
        tokenizer = load_tokenizer(recipe.model, report.model)
        recipe, family = settle_architecture(recipe, report)
        task, tokenized = prepare_data(recipe, tokenizer, family)
    if task.labels and recipe.task.labels is None:  # inferred: written into the run's recipe.yaml
        recipe = _with_task(recipe, labels=task.labels)
    set_seed(recipe.train.seed)  # the new head's initial weights depend on it
    model = build_model(recipe, report.model, task, tokenizer)  # before the run folder: nothing written on failure
    run_dir = choose_run_dir(recipe, overwrite=overwrite, resume=resume, accelerator=accelerator)
    log.info("run folder: %s", run_dir)
    if accelerator.is_main_process:
        if resume:
            warn_if_changed(run_dir, recipe)
        write_recipe(run_dir, recipe)
    engine = Engine(recipe.train, run_dir, accelerator, metric=task.metric_names[0])
    engine.setup(
        model,
        tokenizer,
        task.collator(tokenizer, pad_to_multiple_of=8 if accelerator.mixed_precision != "no" else None),
        task.forward,
        tokenized["train"],
        tokenized["eval"],
        lambda m, loader: evaluate_model(m, loader, task, accelerator),
        resume_from=latest_checkpoint(run_dir) if resume else None,
    )
    state = engine.train()
    metrics = {
        **engine.save_final(),
        "train_runtime_s": round(state.train_seconds, 2),
        "train_samples_per_second": round(state.samples_seen / max(state.train_seconds, 1e-9), 2),
        "num_train_samples": engine.num_train_samples,
        "train_steps": state.global_step,
        "best_step": state.best_step,
        **parameter_report(model),
        **peak_memory(),
    }
    if accelerator.is_main_process:
        metrics.update(saved_size(run_dir))
        write_json(run_dir / METRICS_FILE, metrics)
        plot_training(run_dir)
        write_model_card(run_dir, recipe, metrics, task)
        if recipe.hub is not None and recipe.hub.push:
            log.info("pushed: %s", push_run(run_dir))
    accelerator.end_training()
    return RunResult(run_dir, metrics)


def settle_architecture(recipe: Recipe, report: Report) -> tuple[Recipe, str]:
    """The checkpoint's family, and the recipe with `task.head: auto` resolved (written into recipe.yaml)."""
    family, model_type = resolve_architecture(recipe.model, report)
    problems = head_problems(recipe, family, model_type)
    if problems:
        raise FinetuneError(*problems)
    head = resolve_head(recipe.task.head, family, model_type, recipe.task.predicts_score)
    if head != recipe.task.head:
        log.info("task.head: %s for %s (%s)", head, recipe.model.name, model_type or family)
    return _with_task(recipe, head=head), family


def _with_task(recipe: Recipe, **updates: Any) -> Recipe:
    return recipe.model_copy(update={"task": recipe.task.model_copy(update=updates)})


def prepare_data(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, family: str | None) -> tuple[Task, Any]:
    """Load, check, cap and tokenize the splits; for decoders, GPT-1's tokens join the tokenizer first."""
    raw = data.load_raw(recipe.data, {"train": recipe.data.train_split, "eval": recipe.data.eval_split})
    data.check_columns(raw, recipe.task)
    task = build_task(recipe.task, data.resolve_labels(recipe, raw["train"]))
    words = recipe.task.verbalizer
    if words is not None and task.labels is not None and set(words) != set(task.labels):
        raise FinetuneError(f"task.verbalizer: needs one word for each class ({', '.join(task.labels)})")
    task.family = family or "encoder"
    if family == "decoder":
        task.gpt1_ids = add_gpt1_tokens(tokenizer)
    raw = data.cap_splits(raw, recipe.data, recipe.train.seed)
    tokenized = data.tokenize(raw, task, tokenizer, recipe.data.max_length)
    data.log_samples(tokenized["train"], tokenizer)
    return task, tokenized


@dataclass
class LoadedRun:
    """A finished run (or checkpoint) ready to score: its recipe, task, tokenizer and prepared model."""

    recipe: Recipe
    task: Task
    tokenizer: PreTrainedTokenizerBase
    model: Any
    accelerator: Any

    def loader(self, features: Any) -> DataLoader:
        collator = self.task.collator(self.tokenizer, pad_to_multiple_of=None)
        loader = DataLoader(features, batch_size=self.recipe.train.eval_batch_size, collate_fn=collator)
        return self.accelerator.prepare(loader)


def load_run(folder: Path, dequantize: bool = False, prepare: bool = True) -> LoadedRun:
    """Load a run folder or one of its checkpoints onto this machine's device (an adapter run's 4/8-bit base
    in full precision with `dequantize`; left on the CPU, with no accelerator, without `prepare`)."""
    recipe = load_recipe(find_recipe(folder))
    if is_adapter_dir(folder):
        task, tokenizer, model = _load_adapter_run(recipe, folder, dequantize)
    else:
        probe = build_task(recipe.task, None)
        probe.family = detect_family(read_config(folder)) if recipe.model.family == "auto" else recipe.model.family
        model, tokenizer = load_finetuned(str(folder), probe.model_class)
        labels = None
        if recipe.task.has_classes:
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        task = build_task(recipe.task, labels)
        task.family = probe.family
        if isinstance(model, ExtractTokenModel):
            task.gpt1_ids = add_gpt1_tokens(tokenizer)  # already in the saved tokenizer: only looks their ids up
    if not prepare:
        return LoadedRun(recipe, task, tokenizer, model.eval(), None)
    accelerator = make_accelerator(recipe.train.model_copy(update={"grad_accum": 1}))
    return LoadedRun(recipe, task, tokenizer, accelerator.prepare(model), accelerator)


def _load_adapter_run(recipe: Recipe, folder: Path, dequantize: bool) -> tuple[Task, PreTrainedTokenizerBase, Any]:
    """An adapter run: its base checkpoint, built as in training, with the saved adapter and head."""
    resolved = resolve_model(recipe.model.name)
    known = None if recipe.model.family == "auto" else recipe.model.family
    family, _ = resolve_architecture(recipe.model, Report(model=resolved, family=known))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = build_task(recipe.task, recipe.task.labels)
    task.family = family
    if family == "decoder":
        task.gpt1_ids = add_gpt1_tokens(tokenizer)
    return task, tokenizer, load_adapter(recipe, resolved, task, tokenizer, folder, dequantize)


def evaluate_run(folder: Path, split: str | None = None) -> dict[str, float]:
    """`finetune eval`: score a run folder or checkpoint on its recipe's evaluation split (or `split`)."""
    run = load_run(folder)
    split = split or run.recipe.data.eval_split
    raw = data.load_raw(run.recipe.data, {"eval": split})
    data.check_columns(raw, run.task.spec)
    raw = data.cap_splits(raw, run.recipe.data, run.recipe.train.seed)
    tokenized = data.tokenize(raw, run.task, run.tokenizer, run.recipe.data.max_length)["eval"]
    metrics = evaluate_model(run.model, run.loader(tokenized), run.task, run.accelerator)
    if run.accelerator.is_main_process:
        write_json(folder / f"eval_{split}.json", metrics)
    return metrics


def predict(folder: Path, input_path: Path, output_path: Path | None = None) -> list[dict[str, Any]]:
    """`finetune predict`: label (with probabilities) or score every row of a jsonl, json, csv, tsv or parquet file."""
    run = load_run(folder)
    rows = _read_inputs(input_path, run.task)
    columns = {c: [r.get(c) for r in rows] for c in rows[0]}
    encoded = run.task.format(columns, run.tokenizer, run.recipe.data.max_length)
    features = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
    logits, _ = predict_logits(run.model, run.loader(features), run.task, run.accelerator)
    records = [{**row, **pred} for row, pred in zip(rows, run.task.describe(logits), strict=True)]
    if output_path is not None:
        output_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def _read_inputs(path: Path, task: Task) -> list[dict[str, Any]]:
    fmt = FORMATS_BY_SUFFIX.get(path.suffix)
    if fmt is None:
        raise FinetuneError(f"--input: {path.name} is not one of {', '.join(FORMATS_BY_SUFFIX)}")
    rows = list(read_rows(LocalTables({"input": path}, ReaderSpec(), {}, "--input"), "input", fmt))
    missing = [c for c in task.text_fields if rows and c not in rows[0]]
    if not rows or missing:
        raise FinetuneError(f"--input: {path} " + (f"lacks column(s) {', '.join(missing)}" if rows else "has no rows"))
    return rows
