"""Classification: one class per text or text pair; softmax over the classes, cross-entropy loss."""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.errors import FinetuneError
from finetune.labels import label_id
from finetune.tasks.base import Task


class Classification(Task):
    name = "classification"
    problem_type = "single_label_classification"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def encode_label(self, value: Any, row: int) -> int:
        found = label_id(value, self.labels)
        if found is None:
            raise FinetuneError(
                f"task.label: {value!r} in row {row} is not one of the classes ({', '.join(self.labels)})"
            )
        return found

    def metric_inputs(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(axis=-1)

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        return [
            {
                "label": self.labels[int(p.argmax())],
                "probabilities": {n: round(float(x), 6) for n, x in zip(self.labels, p)},
            }
            for p in probs
        ]
