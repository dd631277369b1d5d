"""Regression: a text or pair to one number (e.g. STS-B similarity 0-5); a single output, MSE loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune.tasks.base import Task


class Regression(Task):
    name = "regression"
    problem_type = "regression"

    @property
    def num_labels(self) -> int:
        return 1

    def example_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.reshape(-1), labels.float(), reduction="none")

    def metric_inputs(self, logits: np.ndarray) -> np.ndarray:
        return logits.reshape(-1)

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return [{"score": round(float(x), 6)} for x in logits.reshape(-1)]
