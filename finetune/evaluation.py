"""Evaluation: run a model over a dataloader, gather across processes, score with the task's metrics."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from finetune.metrics import compute_metrics
from finetune.tasks import Task


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
    metrics = compute_metrics(task.metric_names, task.metric_inputs(logits), labels)
    metrics["eval_loss"] = task.loss(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {name: round(value, 6) for name, value in metrics.items()}
