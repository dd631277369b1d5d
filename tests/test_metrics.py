"""F1 as the recipe declares it: averaged over the declared classes, binary on the declared positive class,
whatever values a split happens to hold; options that do not fit the classes are one-line errors."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import MINILM, REPO, recipe_file
from sklearn.metrics import f1_score
from transformers.modeling_outputs import SequenceClassifierOutput

from finetune.errors import FinetuneError
from finetune.evaluation import evaluate_model
from finetune.labels import infer_labels
from finetune.recipe import load_recipe, validate_dict
from finetune.tasks import build_task
from finetune.validate import check


class FixedScores(torch.nn.Module):
    """A stand-in classifier: its logits are the batch's `scores`."""

    def forward(self, scores: torch.Tensor, **_) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=scores)


def evaluated_f1(labels: list[str], references: list[int], predictions: list[int], **task) -> float:
    """f1 through evaluate_model, for a classifier over `labels` that predicts `predictions`."""
    spec = validate_dict(
        {
            "model": MINILM,
            "task": {"type": "classification", "text_a": "s", "metrics": ["f1"], **task},
            "data": {"files": {"train": "t.csv", "validation": "v.csv"}},
        }
    ).task
    scores = torch.nn.functional.one_hot(torch.tensor(predictions), len(labels)).float()  # (N, C)
    batch = {"scores": scores, "labels": torch.tensor(references)}
    return evaluate_model(FixedScores(), [batch], build_task(spec, labels), Accelerator(cpu=True))["f1"]


def test_f1_averages_over_the_declared_classes_when_a_split_holds_fewer():
    labels = ["contradiction", "entailment", "neutral"]
    references, predictions = [0, 0, 0, 0], [0, 0, 1, 0]  # one class in the references, two of three in all
    expected = f1_score(references, predictions, average="macro", labels=[0, 1, 2], zero_division=0.0)
    assert evaluated_f1(labels, references, predictions) == pytest.approx(expected, abs=1e-6)


def test_positive_label_picks_the_class_binary_f1_scores():
    references = ["yes", "no", "yes", "yes", "no", "yes"]
    predictions = ["yes", "no", "no", "yes", "yes", "no"]
    labels = infer_labels(references)
    assert labels == ["no", "yes"]  # sorted: the default positive class (id 1) is yes
    ids = [labels.index(name) for name in references], [labels.index(name) for name in predictions]
    for options, positive in (({}, "yes"), ({"positive_label": "no"}, "no")):
        expected = f1_score(references, predictions, pos_label=positive)
        assert evaluated_f1(labels, *ids, **options) == pytest.approx(expected, abs=1e-6)
    # a split whose references hold one class is still scored on the declared positive class
    expected = f1_score(["yes"] * 3, ["no", "yes", "yes"], pos_label="no", zero_division=0.0)
    assert evaluated_f1(labels, [1, 1, 1], [0, 1, 1], positive_label="no") == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task.positive_label=maybe"], "task.positive_label: 'maybe' is not one of the classes (not_equivalent,"),
        (
            ["task.labels=[a, b, c]", "task.f1_average=binary"],
            "task.f1_average: binary needs exactly two classes, not 3 (a, b, c)",
        ),
        (["task.labels=[a, b, c]", "task.positive_label=a"], "task.positive_label: only binary f1 has a positive"),
        (["task.metrics=[accuracy]", "task.positive_label=equivalent"], "task.positive_label: only applies when"),
    ],
)
def test_f1_options_that_do_not_fit_the_classes_are_one_line(overrides, expected):
    with pytest.raises(FinetuneError) as caught:
        load_recipe(REPO / "recipes/glue/mrpc-minilm.yaml", overrides)
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(expected)


@pytest.mark.parametrize(
    ("values", "option", "expected"),
    [
        (["yes", "no"], "task.positive_label=maybe", "task.positive_label: 'maybe' is not one of the classes (no,"),
        (["yes", "no", "maybe"], "task.f1_average=binary", "task.f1_average: binary needs exactly two classes"),
    ],
)
def test_f1_options_are_checked_against_inferred_classes(tmp_path, values, option, expected):
    rows = "".join(f"text {i},{value}\n" for i, value in enumerate(values * 2))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.csv").write_text("sentence,label\n" + rows, encoding="utf-8")
    path = recipe_file(
        tmp_path,
        f"model: {MINILM}\ntask: {{type: classification, text_a: sentence, metrics: [f1]}}\n"
        f"data: {{files: {{train: {tmp_path / 'train.csv'}, validation: {tmp_path / 'dev.csv'}}}}}\n",
    )
    problems = check(load_recipe(path, [option])).problems
    assert len(problems) == 1 and problems[0].startswith(expected), problems
