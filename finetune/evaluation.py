"""Evaluation: run a model over a dataloader, gather across processes, score with the task's metrics; for seq2seq,
generate the outputs and judge the text."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from finetune.columns import GROUP, PROMPT_LENGTH, REFERENCES
from finetune.metrics import compute_metrics, f1_setting
from finetune.recipe.schema import GenerationSpec
from finetune.rundir import write_json
from finetune.tasks import Seq2Seq, Task

MAX_LOG_PERPLEXITY = 700.0  # exp() of more overflows a float; metrics files hold finite numbers only


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, C) and labels (N,) when the data has them, gathered from every process.

    Multiple-choice batches may differ in their number of candidates; shorter rows are padded with -inf.
    """
    model.eval()
    logits, labels = [], []
    for batch in loader:
        targets = batch.pop("labels", None)
        _, scores = task.forward(model, batch)
        scores = accelerator.pad_across_processes(scores.float(), dim=1, pad_index=float("-inf"))
        logits.append(accelerator.gather_for_metrics(scores).cpu())
        if targets is not None:
            labels.append(accelerator.gather_for_metrics(targets).cpu())
    width = max(x.shape[1] for x in logits)
    logits = [torch.nn.functional.pad(x, (0, width - x.shape[1]), value=float("-inf")) for x in logits]
    return torch.cat(logits).numpy(), (torch.cat(labels).numpy() if labels else None)


def evaluate_model(
    model: torch.nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator
) -> dict[str, float]:
    """The task's metrics and the mean loss (`eval_loss`) over the whole split."""
    logits, labels = predict_logits(model, loader, task, accelerator)
    f1 = f1_setting(task.spec, task.labels, candidates=logits.shape[1])
    metrics = compute_metrics(task.metric_names, task.metric_inputs(logits), labels, f1)
    metrics["eval_loss"] = task.loss(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {name: round(value, 6) for name, value in metrics.items()}


@torch.no_grad()
def evaluate_tokens(
    model: torch.nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator
) -> dict[str, float]:
    """A language model's mean loss per target token over the whole split (`eval_loss`) and its perplexity."""
    model.eval()
    total = torch.zeros(2)
    for batch in loader:
        loss, _ = task.forward(model, batch)
        total += accelerator.gather_for_metrics(torch.stack(loss.per_example, dim=1)).cpu().sum(0)  # (N, 2) summed
    mean = (total[0] / total[1].clamp(min=1)).item()
    return {"perplexity": round(math.exp(min(mean, MAX_LOG_PERPLEXITY)), 6), "eval_loss": round(mean, 6)}


@torch.no_grad()
def generate_texts(
    model: torch.nn.Module,
    loader: DataLoader,
    task: Seq2Seq,
    accelerator: Accelerator,
    spec: GenerationSpec,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[list[str], float | None]:
    """The generated text of every example in dataset order, gathered from every process, and the teacher-forced
    loss per target token (None when the data has no targets)."""
    model.eval()
    generator = accelerator.unwrap_model(model)
    texts: list[str] = []
    sums, counts = [], []  # per example: the examples a process repeats to even out the last batch are dropped
    for batch in loader:
        if "labels" in batch:
            loss, _ = task.forward(model, batch)
            per_example = accelerator.gather_for_metrics(torch.stack(loss.per_example, dim=1)).cpu()  # (N, 2)
            sums.append(per_example[:, 0])
            counts.append(per_example[:, 1])
        ids = task.generate(generator, batch, spec, tokenizer)
        ids = accelerator.pad_across_processes(ids, dim=1, pad_index=tokenizer.pad_token_id)
        texts += [
            t.strip() for t in tokenizer.batch_decode(accelerator.gather_for_metrics(ids), skip_special_tokens=True)
        ]
    total = float(torch.cat(counts).sum()) if counts else 0.0
    return texts, (float(torch.cat(sums).sum()) / total if total else None)


def evaluate_generation(
    model: torch.nn.Module,
    loader: DataLoader,
    task: Seq2Seq,
    accelerator: Accelerator,
    spec: GenerationSpec,
    tokenizer: PreTrainedTokenizerBase,
    eval_set: Dataset,
    predictions_path: Path | None = None,
) -> dict[str, float]:
    """Generate for every example of `eval_set` (tokenized, with its references), score the text with the task's
    metrics, and write prompt, prediction and references per example to `predictions_path` (jsonl)."""
    texts, loss = generate_texts(model, loader, task, accelerator, spec, tokenizer)
    references = eval_set[REFERENCES]
    metrics = compute_metrics(task.metric_names, texts, references)
    if loss is not None:
        metrics["eval_loss"] = loss
    groups = eval_set[GROUP] if GROUP in eval_set.column_names else None
    if predictions_path is not None and accelerator.is_main_process:
        prompts = tokenizer.batch_decode(
            [ids[:n] for ids, n in zip(eval_set["input_ids"], eval_set[PROMPT_LENGTH])], skip_special_tokens=True
        )
        records = [
            {"prompt": p, "prediction": t, "references": r} for p, t, r in zip(prompts, texts, references, strict=True)
        ]
        if groups is not None:
            records = [{"task": g, **r} for g, r in zip(groups, records)]
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        predictions_path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        if groups is not None:
            write_task_table(per_task_metrics(task.metric_names, texts, references, groups), predictions_path)
    return {name: round(value, 6) for name, value in metrics.items()}


def per_task_metrics(
    names: list[str], texts: list[str], references: list[list[str]], groups: list[str]
) -> dict[str, dict[str, float]]:
    """The metrics of each task's examples, and their count."""
    table = {}
    for group in sorted(set(groups)):
        chosen = [i for i, g in enumerate(groups) if g == group]
        scores = compute_metrics(names, [texts[i] for i in chosen], [references[i] for i in chosen])
        table[group] = {"examples": len(chosen), **{k: round(v, 4) for k, v in scores.items()}}
    return table


def write_task_table(table: dict[str, dict[str, float]], predictions_path: Path) -> None:
    """`<predictions>.tasks.json` and the markdown table `<predictions>.tasks.md`: a row per task, then the mean
    over tasks (each task counting once)."""
    base = predictions_path.with_suffix("")
    write_json(base.with_name(base.name + ".tasks.json"), table)
    names = [k for k in next(iter(table.values())) if k != "examples"]
    rows = [(task, row["examples"], [row[n] for n in names]) for task, row in table.items()]
    means = [sum(row[n] for row in table.values()) / len(table) for n in names]
    rows.append((f"mean over {len(table)} tasks", sum(r["examples"] for r in table.values()), means))
    lines = ["| task | examples | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    lines += [f"| {t} | {n} | " + " | ".join(f"{v:.4f}" for v in values) + " |" for t, n, values in rows]
    base.with_name(base.name + ".tasks.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def evaluator(
    task: Task,
    accelerator: Accelerator,
    tokenizer: PreTrainedTokenizerBase,
    generation: GenerationSpec,
    eval_set: Dataset,
    predictions_path: Callable[[int | None], Path | None],
) -> Callable[[torch.nn.Module, DataLoader, int | None], dict[str, float]]:
    """How a task is scored, by what it predicts: a language model by its loss per token, a generating task by its
    text (its predictions written to `predictions_path(step)`), any other by its outputs against the labels."""
    if task.spec.predicts == "tokens":
        return lambda model, loader, step=None: evaluate_tokens(model, loader, task, accelerator)
    if not task.spec.generates:
        return lambda model, loader, step=None: evaluate_model(model, loader, task, accelerator)

    def generate_and_score(model: torch.nn.Module, loader: DataLoader, step: int | None = None) -> dict[str, float]:
        path = predictions_path(step)
        return evaluate_generation(model, loader, task, accelerator, generation, tokenizer, eval_set, path)

    return generate_and_score


def predict_outputs(
    model: torch.nn.Module,
    loader: DataLoader,
    task: Task,
    accelerator: Accelerator,
    generation: GenerationSpec,
    tokenizer: PreTrainedTokenizerBase,
) -> Any:
    """What `task.describe` turns into prediction records: generated texts, or logits."""
    if task.spec.generates:
        return generate_texts(model, loader, task, accelerator, generation, tokenizer)[0]
    return predict_logits(model, loader, task, accelerator)[0]
