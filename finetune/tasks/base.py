"""What every task type shares: the columns it reads and how one or two texts become model inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from finetune.recipe.schema import TaskSpec


class Task:
    """A task type: formats raw examples, encodes labels, and turns model outputs into predictions."""

    name: str
    problem_type: str

    def __init__(self, spec: TaskSpec, labels: list[str] | None) -> None:
        self.spec = spec
        self.labels = labels

    @property
    def num_labels(self) -> int:
        raise NotImplementedError

    @property
    def text_columns(self) -> list[str]:
        return [c for c in (self.spec.text_a, self.spec.text_b) if c]

    @property
    def columns(self) -> list[str]:
        """The raw columns this task reads, the label last."""
        return [*self.text_columns, self.spec.label]

    @property
    def metric_names(self) -> list[str]:
        return self.spec.metric_names

    def encode_label(self, value: Any, row: int) -> int | float:
        raise NotImplementedError

    def format(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list]:
        """Tokenize a batch of raw rows (the tokenizer's own single or pair encoding) and attach `labels`.

        >>> from transformers import BertTokenizerFast  # doctest: +SKIP
        >>> task.format({"sentence": ["a fine film"], "label": ["1"]}, tok, 8)  # doctest: +SKIP
        {'input_ids': [[101, 1037, 2986, 2143, 102]], 'token_type_ids': [[0, 0, 0, 0, 0]],
         'attention_mask': [[1, 1, 1, 1, 1]], 'labels': [1]}
        """
        texts = [batch[c] for c in self.text_columns]
        features = dict(tokenizer(*texts, truncation=True, max_length=max_length))
        if self.spec.label in batch:
            features["labels"] = [self.encode_label(v, i) for i, v in enumerate(batch[self.spec.label])]
        return features

    def metric_inputs(self, logits: np.ndarray) -> np.ndarray:
        """Predictions in the form the metrics compare with the labels."""
        raise NotImplementedError

    def describe(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """One readable prediction record per example, for `finetune predict`."""
        raise NotImplementedError
