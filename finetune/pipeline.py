"""The stages composed: train, eval and predict. The CLI and the tests call these same functions."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from finetune import data
from finetune.accelerator import make_accelerator, settle_precision
from finetune.adapters import check_quantization_device
from finetune.checkpoints import write_failed
from finetune.engine import Engine, throughput
from finetune.errors import FinetuneError
from finetune.evaluation import evaluator, predict_outputs
from finetune.export import push_run, write_model_card
from finetune.footprint import parameter_report, peak_memory, saved_size
from finetune.lengths import plot_lengths, token_metrics, without_histograms
from finetune.loaded_run import LoadedRun, load_run
from finetune.mirrors import base_record
from finetune.model import build_model
from finetune.plots import plot_training
from finetune.prepare import Prepared, checked, prepare, tokenize_splits
from finetune.recipe import Recipe
from finetune.recipe.data_section import ReaderSpec
from finetune.rundir import (
    METRICS_FILE,
    check_resumable,
    check_writable,
    choose_run_dir,
    latest_checkpoint,
    locked,
    write_json,
    write_recipe,
)
from finetune.sources import FORMATS_BY_SUFFIX, LocalTables, read_rows
from finetune.tracking import Trackers
from finetune.transforms import transform_rows
from finetune.validate import Report

log = logging.getLogger(__name__)

LENGTHS_FILE = "lengths.json"
MIXTURE_FILE = "mixture.json"
PREDICTIONS_DIR = "predictions"


@dataclass
class RunResult:
    """What a finished run leaves: its folder and its metrics (as in metrics.json)."""

    run_dir: Path
    metrics: dict[str, Any]


def train(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> RunResult:
    """Validate, load data and model, train, evaluate and save: the whole `finetune train`."""
    report = checked(recipe)
    if recipe.quantize is not None:
        check_quantization_device()
    if recipe.train.precision == "auto":  # settled here so that recipe.yaml records what ran
        precision = settle_precision("auto")
        log.info("train.precision: %s (auto, on this machine)", precision)
        recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"precision": precision})})
    accelerator = make_accelerator(recipe.train)
    # one process converts, downloads and tokenizes; the rest read its cache
    ready = prepare(recipe, report, accelerator.main_process_first())
    recipe = ready.recipe
    set_seed(recipe.train.seed)  # the new head's initial weights depend on it
    # built before the run folder is chosen: nothing is written when it fails
    model = build_model(recipe, report.model, ready.task, ready.tokenizer)
    run_dir = choose_run_dir(recipe, overwrite=overwrite, resume=resume, accelerator=accelerator)
    log.info("run folder: %s", run_dir)
    with locked(run_dir, accelerator):
        if resume:
            check_resumable(run_dir, recipe)
        try:
            metrics = _train_in(run_dir, ready, model, accelerator, report, resume)
        except OSError as exc:  # a log line or a report on a full disk; the checkpoints say themselves
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise write_failed(run_dir, "into the run folder", None, exc) from None
    accelerator.end_training()
    return RunResult(run_dir, metrics)


def _train_in(
    run_dir: Path, ready: Prepared, model: Any, accelerator: Any, report: Report, resume: bool
) -> dict[str, Any]:
    """Train `model` on what `ready` prepared into `run_dir`, save and report; the run's metrics."""
    recipe, task, tokenizer = ready.recipe, ready.task, ready.tokenizer
    tokenized, data_report = ready.splits, ready.data_report
    engine = Engine(recipe.train, run_dir, accelerator, metric=task.metric_names[0])
    engine.setup(
        model,
        tokenizer,
        # multiples of 8 feed a GPU's tensor cores in half precision; on a CPU they are only more padding
        task.collator(
            tokenizer,
            pad_to_multiple_of=8 if accelerator.mixed_precision != "no" and accelerator.device.type == "cuda" else None,
        ),
        task,
        task.prepare_training(tokenized["train"], tokenizer, accelerator, recipe.train.eval_batch_size),
        tokenized["eval"],
        evaluator(
            task,
            accelerator,
            tokenizer,
            recipe.generation,
            tokenized["eval"],
            lambda step: run_dir / PREDICTIONS_DIR / f"step-{step}.jsonl",
        ),
        resume_from=latest_checkpoint(run_dir) if resume else None,
    )
    if accelerator.is_main_process:  # once the checkpoint has loaded: a failed resume leaves the folder as it was
        write_recipe(run_dir, recipe, base_record(report.model, recipe.model.revision))
        if data_report["lengths"]:
            write_json(run_dir / LENGTHS_FILE, without_histograms(data_report["lengths"]))
            plot_lengths(data_report["lengths"], run_dir)
        if data_report["mixture"]:
            write_json(run_dir / MIXTURE_FILE, data_report["mixture"])
    trackers = Trackers(
        recipe.train.report_to, run_dir, recipe.name, recipe.model_dump(mode="json"), engine.state.global_step
    )
    try:
        state = engine.train(trackers)
    finally:
        trackers.finish()
    metrics = {
        **engine.save_final(),
        "train_runtime_s": round(state.train_seconds, 2),
        **{f"train_{name}": value for name, value in throughput(state).items()},
        "train_real_tokens": state.real_tokens,
        "train_computed_tokens": state.computed_tokens,
        "data_seconds": round(ready.data_seconds, 2),
        "num_train_samples": engine.num_train_samples,
        "train_steps": state.global_step,
        "train_skipped_steps": state.skipped_steps,
        "torch_threads": state.threads,
        "best_step": state.best_step,
        **token_metrics(data_report["lengths"]),
        **parameter_report(model),
        **peak_memory(),
    }
    if accelerator.is_main_process:
        metrics.update(saved_size(run_dir))
        write_json(run_dir / METRICS_FILE, metrics)
        final = run_dir / PREDICTIONS_DIR / f"step-{state.best_step or state.global_step}"
        for suffix in (".jsonl", ".tasks.json", ".tasks.md"):  # what the weights the run ends with generated
            if final.with_name(final.name + suffix).is_file():
                shutil.copy2(final.with_name(final.name + suffix), run_dir / f"predictions{suffix}")
        plot_training(run_dir)
        write_model_card(run_dir, recipe, metrics, task)
        if recipe.hub is not None and recipe.hub.push:
            log.info("pushed: %s", push_run(run_dir))
    return metrics


def evaluate_run(folder: Path, split: str | None = None) -> dict[str, float]:
    """`finetune eval`: score a run folder or checkpoint on its recipe's evaluation split (or `split`)."""
    run = load_run(folder)
    split = split or run.recipe.data.eval_split
    raw, _ = data.load_splits(run.recipe, {"eval": split})
    tokenized = tokenize_splits(raw, run.task, run.tokenizer, run.recipe)[0]["eval"]  # as training tokenized it
    predictions = folder / f"predictions_{split}.jsonl"  # seq2seq: beside the metrics
    score = evaluator(run.task, run.accelerator, run.tokenizer, run.recipe.generation, tokenized, lambda _: predictions)
    metrics = score(run.model, run.loader(tokenized))
    if run.accelerator.is_main_process:
        write_json(folder / f"eval_{split}.json", metrics)
    return metrics


def predict(folder: Path, input_path: Path, output_path: Path | None = None) -> list[dict[str, Any]]:
    """`finetune predict`: label (with probabilities) or score every row of a jsonl, json, csv, tsv or parquet file."""
    if output_path is not None:
        check_writable(output_path, "--output", inputs=(input_path,))
    run = load_run(folder)
    rows = _read_inputs(input_path, run)
    columns = {c: [r.get(c) for r in rows] for c in rows[0]}
    encoded = run.task.format_inputs(columns, run.tokenizer, run.recipe.data.max_length)
    features = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
    outputs = predict_outputs(
        run.model, run.loader(features), run.task, run.accelerator, run.recipe.generation, run.tokenizer
    )
    records = [{**row, **pred} for row, pred in zip(rows, run.task.describe(outputs), strict=True)]
    if output_path is not None:
        output_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def _read_inputs(path: Path, run: LoadedRun) -> list[dict[str, Any]]:
    """The rows to predict, in the training data's shape: through the recipe's data.transforms (those it can
    apply without an answer) into the columns the task reads."""
    fmt = FORMATS_BY_SUFFIX.get(path.suffix)
    if fmt is None:
        raise FinetuneError(f"--input: {path.name} is not one of {', '.join(FORMATS_BY_SUFFIX)}")
    rows = list(read_rows(LocalTables({"input": [path]}, ReaderSpec(), {}, "--input"), "input", fmt))
    if rows:
        rows = transform_rows(run.recipe.data.transforms, "input", rows, unlabelled=True)
    missing = [c for c in run.task.text_fields if rows and c not in rows[0]]
    if not rows or missing:
        after = " after data.transforms" if run.recipe.data.transforms else ""
        raise FinetuneError(
            f"--input: {path} " + (f"lacks column(s) {', '.join(missing)}{after}" if rows else f"has no rows{after}")
        )
    return rows
