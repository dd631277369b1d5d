"""Metrics as `evaluate` modules. The standard classification, correlation and generated-text scores are defined
here (so they load offline); any other name is loaded with `evaluate.load`.

Generated text is judged against one or more references per example, the best-matching one counting, on the
scales `evaluate`'s own modules use: ROUGE (rouge_score, stemmed) and exact match from 0 to 1, sacreBLEU and chrF
from 0 to 100.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import evaluate
import sacrebleu
from rouge_score import rouge_scorer
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from finetune.specs.texts import ClassesSpec

GREATER_IS_BETTER = {
    "accuracy": True,
    "f1": True,
    "matthews_correlation": True,
    "pearson": True,
    "spearman": True,
    "rouge1": True,
    "rouge2": True,
    "rougeL": True,
    "rougeLsum": True,
    "bleu": True,
    "chrf": True,
    "exact_match": True,
    "loss": False,
    "perplexity": False,
}


@dataclass(frozen=True)
class F1Setting:
    """How f1 scores class ids 0..classes-1: averaged by `average`; binary scores the class `positive`."""

    classes: int
    average: str = "macro"
    positive: int = 1


def f1_setting(spec: ClassesSpec, labels: list[str] | None, candidates: int) -> F1Setting:
    """The recipe's f1 for a task's class names (task.f1_average, task.positive_label); without classes
    (multiple choice), macro over the `candidates` positions."""
    if labels is None:
        return F1Setting(candidates)
    average, positive = spec.f1_averaging(labels)
    return F1Setting(len(labels), average, positive)


def _f1(refs: Sequence, preds: Sequence, setting: F1Setting) -> float:
    # the classes are fixed by the setting, not by the values this split happens to hold
    if setting.average == "binary":
        return f1_score(refs, preds, average="binary", pos_label=setting.positive, zero_division=0.0)
    classes = list(range(setting.classes))
    return f1_score(refs, preds, average=setting.average, labels=classes, zero_division=0.0)


SCORES: dict[str, tuple[Callable[..., float], str]] = {
    # name: (score(references, predictions), feature dtype); f1 also takes its F1Setting
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

    def _compute(self, predictions: Sequence, references: Sequence, **options) -> dict[str, float]:
        return {self.score_name: float(self.score(references, predictions, **options))}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation for exact match: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _rouge(kind: str) -> Callable[[Sequence[str], Sequence[list[str]]], float]:
    def score(predictions: Sequence[str], references: Sequence[list[str]]) -> float:
        scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
        best = [scorer.score_multi(refs, pred)[kind].fmeasure for pred, refs in zip(predictions, references)]
        return sum(best) / max(len(best), 1)

    return score


def _reference_streams(references: Sequence[list[str]]) -> list[list[str]]:
    """sacreBLEU's layout: one stream per reference position. Rows with fewer references repeat their first,
    which leaves clipped n-gram counts and the closest reference length unchanged."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]


def _exact_match(predictions: Sequence[str], references: Sequence[list[str]]) -> float:
    hits = [any(normalize_answer(p) == normalize_answer(r) for r in refs) for p, refs in zip(predictions, references)]
    return sum(hits) / max(len(hits), 1)


TEXT_SCORES: dict[str, Callable[[Sequence[str], Sequence[list[str]]], float]] = {
    # name: score(predictions, references per prediction)
    **{kind: _rouge(kind) for kind in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
    # force: data sets such as JFLEG ship tokenized text, which sacreBLEU would otherwise warn about at every call
    "bleu": lambda p, r: sacrebleu.corpus_bleu(list(p), _reference_streams(r), force=True).score,
    "chrf": lambda p, r: sacrebleu.corpus_chrf(list(p), _reference_streams(r)).score,
    "exact_match": _exact_match,
}


class TextMetric(evaluate.Metric):
    """One score of generated texts against a list of references each, e.g. rougeL."""

    def __init__(self, name: str, **kwargs) -> None:
        self.score_name, self.score = name, TEXT_SCORES[name]
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features(
            {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
        )
        return evaluate.MetricInfo(
            description=f"{self.score_name} of generated text", citation="", inputs_description="", features=features
        )

    def _compute(self, predictions: Sequence[str], references: Sequence[list[str]]) -> dict[str, float]:
        return {self.score_name: float(self.score(predictions, references))}


def load_metric(name: str) -> evaluate.EvaluationModule:
    """An evaluate module by name: ours for the standard scores, evaluate.load for any other."""
    if name in TEXT_SCORES:
        return TextMetric(name)
    return ScoreMetric(name) if name in SCORES else evaluate.load(name)


def compute_metrics(
    names: Sequence[str], predictions: Sequence, references: Sequence, f1: F1Setting | None = None
) -> dict[str, float]:
    """Every named metric over the same predictions, as one flat dict; f1 needs its setting (`f1_setting`)."""
    results: dict[str, float] = {}
    for name in names:
        if name == "f1" and f1 is None:
            raise ValueError("compute_metrics: f1 needs an F1Setting (the class count, average and positive class)")
        options = {"setting": f1} if name == "f1" else {}
        results.update(load_metric(name).compute(predictions=predictions, references=references, **options))
    return results
