"""Evaluation: run a model over a dataloader, gather across processes, score with the task's metrics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from finetune.metrics import compute_metrics
from finetune.tasks import Task


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, num_labels) and labels (N,) when the data has them, gathered from every process."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        targets = batch.pop("labels", None)
        logits.append(accelerator.gather_for_metrics(model(**batch).logits.float()).cpu())
        if targets is not None:
            labels.append(accelerator.gather_for_metrics(targets).cpu())
    return torch.cat(logits).numpy(), (torch.cat(labels).numpy() if labels else None)


def mean_loss(logits: np.ndarray, labels: np.ndarray, task: Task) -> float:
    """The training loss over the whole split, computed once on the gathered outputs."""
    scores, targets = torch.from_numpy(logits), torch.from_numpy(labels)
    if task.problem_type == "regression":
        return F.mse_loss(scores.reshape(-1), targets.float()).item()
    return F.cross_entropy(scores, targets.long()).item()


def evaluate_model(
    model: torch.nn.Module, loader: DataLoader, task: Task, accelerator: Accelerator
) -> dict[str, float]:
    """The task's metrics and the mean loss (`eval_loss`) on one split."""
    logits, labels = predict_logits(model, loader, accelerator)
    metrics = compute_metrics(task.metric_names, task.metric_inputs(logits), labels)
    metrics["eval_loss"] = mean_loss(logits, labels, task)
    return {name: round(value, 6) for name, value in metrics.items()}
