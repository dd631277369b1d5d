"""The task types that read a text or a pair of texts: classification, entailment, similarity and regression."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from finetune.labels import label_id, regression_target
from finetune.specs.base import PredictorSpec, parse_templates


class TextsSpec(PredictorSpec):
    """A text, or a pair of texts, read from columns (dotted paths reach into nested records: question.stem)."""

    text_a: str = Field(description="Column holding the text, or the first text (premise) of a pair.")
    text_b: str | None = Field(None, description="Column holding the second text (hypothesis) of a pair.")

    @model_validator(mode="after")
    def _two_columns(self) -> TextsSpec:
        if self.text_b is not None and self.text_b == self.text_a:
            raise ValueError("task.text_b: names the same column as task.text_a")
        return self

    def fields(self, role: str = "train") -> dict[str, str]:
        found = {"task.text_a": self.text_a, "task.text_b": self.text_b}
        if role != "input":
            found["task.label"] = self.label
        return {key: path for key, path in found.items() if path}


class ClassesSpec(TextsSpec):
    """Texts to one of a list of classes."""

    labels: list[str] | None = Field(
        None,
        description="Class names in id order; integer labels index this list. Inferred from the train split "
        "when absent.",
    )
    prompt_template: str | None = Field(
        None, description="Zero-shot scoring: the prompt before the class word, e.g. '{sentence} It was'."
    )
    verbalizer: dict[str, str] | None = Field(
        None,
        description="The word for each class: scored after task.prompt_template in zero-shot scoring "
        "({positive: ' great'}), written by a text_to_text head (default: the class names).",
    )
    f1_average: Literal["auto", "binary", "macro", "micro", "weighted"] = Field(
        "auto",
        description="How f1 averages over the classes: binary (the F1 of task.positive_label), macro (the mean over "
        "every class, one absent from the split scoring 0), micro, or weighted (by each class's count); auto: binary "
        "with two classes, macro with more, decided by the class list, not by the values a split holds.",
    )
    positive_label: str | None = Field(
        None,
        description="Binary f1: the class it scores, one of the classes (task.labels, or those inferred). Default: "
        "the second class (id 1), e.g. 1 of 0/1; inferred names are sorted, so yes of no/yes. Training logs it.",
    )

    predicts: ClassVar[str] = "classes"
    default_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    task_class: ClassVar[str] = "classification:Classification"

    @model_validator(mode="after")
    def _classes_fit(self) -> ClassesSpec:
        parse_templates(("prompt_template", self.prompt_template))
        if self.labels is not None:
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("task.labels: class names must be unique")
            if len(self.labels) < 2:
                raise ValueError("task.labels: a classification task needs at least two classes")
        used = [f for f in ("f1_average", "positive_label") if getattr(self, f) not in ("auto", None)]
        if used and "f1" not in self.metric_names:
            raise ValueError(f"task.{used[0]}: only applies when task.metrics includes f1")
        if self.labels is not None:
            problem = self.classes_problem(self.labels)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def class_names(self) -> list[str] | None:
        return self.labels

    def classes_problem(self, labels: list[str]) -> str | None:
        if self.verbalizer is not None and set(self.verbalizer) != set(labels):
            return f"task.verbalizer: needs one word for each class ({', '.join(labels)})"
        try:
            self.f1_averaging(labels)
        except ValueError as exc:
            return str(exc)
        return None

    def f1_averaging(self, labels: list[str]) -> tuple[str, int]:
        """f1's averaging over these classes and the id of its positive class (read by binary); a ValueError
        naming the field when task.f1_average or task.positive_label does not fit them."""
        average = self.f1_average if self.f1_average != "auto" else ("binary" if len(labels) == 2 else "macro")
        if average == "binary" and len(labels) != 2:
            raise ValueError(
                f"task.f1_average: binary needs exactly two classes, not {len(labels)} ({', '.join(labels)}); "
                "use macro, micro or weighted"
            )
        if self.positive_label is None:
            return average, 1
        if self.positive_label not in labels:
            raise ValueError(
                f"task.positive_label: {self.positive_label!r} is not one of the classes ({', '.join(labels)})"
            )
        if average != "binary":
            raise ValueError(f"task.positive_label: only binary f1 has a positive class; f1 averages {average} here")
        return average, labels.index(self.positive_label)

    def read_label(self, value: Any, row: dict[str, Any], labels: list[str] | None) -> int | None:
        return label_id(value, labels)

    def label_expectation(self, labels: list[str] | None) -> str:
        return f"not one of the classes ({', '.join(labels)})"


class ClassificationSpec(ClassesSpec):
    """classification: a text, or a pair, to one of the classes."""

    type: Literal["classification"] = Field(description="classification")


class EntailmentSpec(ClassesSpec):
    """entailment: an ordered pair (premise, hypothesis) to a class, the pair kept apart by the tokenizer's
    pair encoding (GPT-1's delimiter on decoders)."""

    type: Literal["entailment"] = Field(description="entailment")
    text_b: str = Field(description="Column holding the hypothesis (the second text of the pair).")


class SimilaritySpec(ClassesSpec):
    """similarity: an unordered pair; both orderings run through the model and their representations are summed
    (GPT-1), to a class (MRPC) or a score (STS-B)."""

    type: Literal["similarity"] = Field(description="similarity")
    text_b: str = Field(description="Column holding the second text of the pair.")
    target: Literal["class", "score"] = Field(
        "class", description="Predict a class (MRPC) or a score with a regression head (STS-B)."
    )

    symmetric: ClassVar[bool] = True
    task_class: ClassVar[str] = "similarity:Similarity"

    @model_validator(mode="after")
    def _scores_have_no_classes(self) -> SimilaritySpec:
        if self.target == "score":
            class_keys = ("labels", "prompt_template", "verbalizer", "positive_label")
            used = [k for k in class_keys if getattr(self, k) is not None]
            used += ["f1_average"] if self.f1_average != "auto" else []
            if used:
                raise ValueError(f"task.{used[0]}: a score has no classes; remove it or set task.target: class")
        return self

    @property
    def predicts(self) -> str:  # type: ignore[override]
        return "score" if self.target == "score" else "classes"

    @property
    def default_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        return RegressionSpec.default_metrics if self.target == "score" else ("accuracy",)

    def read_label(self, value: Any, row: dict[str, Any], labels: list[str] | None) -> int | float | None:
        return regression_target(value) if self.target == "score" else label_id(value, labels)

    def label_expectation(self, labels: list[str] | None) -> str:
        return "not a number" if self.target == "score" else super().label_expectation(labels)


class RegressionSpec(TextsSpec):
    """regression: a text, or a pair, to one number (STS-B's 0-5 similarity); a single output and MSE loss."""

    type: Literal["regression"] = Field(description="regression")

    predicts: ClassVar[str] = "score"
    default_metrics: ClassVar[tuple[str, ...]] = ("pearson", "spearman")
    task_class: ClassVar[str] = "regression:Regression"

    def read_label(self, value: Any, row: dict[str, Any], labels: list[str] | None) -> float | None:
        return regression_target(value)

    def label_expectation(self, labels: list[str] | None) -> str:
        return "not a number"
