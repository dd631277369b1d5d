"""Metrics as `evaluate` modules. The standard classification and correlation scores are defined here
(so they load offline); any other name is loaded with `evaluate.load`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

GREATER_IS_BETTER = {
    "accuracy": True,
    "f1": True,
    "matthews_correlation": True,
    "pearson": True,
    "spearman": True,
    "loss": False,
}


def _f1(refs: Sequence, preds: Sequence) -> float:
    average = "binary" if set(refs) | set(preds) <= {0, 1} else "macro"
    return f1_score(refs, preds, average=average)


SCORES: dict[str, tuple[Callable[[Sequence, Sequence], float], str]] = {
    # name: (score(references, predictions), feature dtype)
    "accuracy": (accuracy_score, "int64"),
    "f1": (_f1, "int64"),
    "matthews_correlation": (matthews_corrcoef, "int64"),
    "pearson": (lambda r, p: pearsonr(r, p)[0], "float64"),
    "spearman": (lambda r, p: spearmanr(r, p)[0], "float64"),
}


class ScoreMetric(evaluate.Metric):
    """One score over predictions and references, e.g. accuracy; the same interface as `evaluate.load`'s modules."""

    def __init__(self, name: str, **kwargs) -> None:
        self.score_name = name
        self.score, self.dtype = SCORES[name]
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features(
            {"predictions": datasets.Value(self.dtype), "references": datasets.Value(self.dtype)}
        )
        return evaluate.MetricInfo(
            description=f"{self.score_name} score", citation="", inputs_description="", features=features
        )

    def _compute(self, predictions: Sequence, references: Sequence) -> dict[str, float]:
        return {self.score_name: float(self.score(references, predictions))}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """An evaluate module by name: ours for the standard scores, evaluate.load for any other."""
    return ScoreMetric(name) if name in SCORES else evaluate.load(name)


def compute_metrics(names: Sequence[str], predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Every named metric over the same predictions, as one flat dict."""
    results: dict[str, float] = {}
    for name in names:
        results.update(load_metric(name).compute(predictions=predictions, references=references))
    return results
