"""Classification and entailment: a text, or an ordered pair (premise, hypothesis), to one of the classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.tasks.base import Task, softmax


class Classification(Task):
    name = "classification"
    problem_type = "single_label_classification"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "label": self.labels[int(p.argmax())],
                "probabilities": {n: round(float(x), 6) for n, x in zip(self.labels, p)},
            }
            for p in softmax(logits)
        ]
