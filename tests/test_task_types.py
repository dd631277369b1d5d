"""GPT-1's task types on encoders: entailment, order-invariant similarity, multiple choice with varying candidates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import GLUE, MINILM, SHARED_DATA, recipe_file, run_cli, sample_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune.batching import GroupCollator
from finetune.fields import answer_index
from finetune.mirrors import resolve_model
from finetune.recipe import validate_dict
from finetune.tasks import build_task


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(MINILM).location)


# CommonsenseQA's and ARC's own layout: {question: {stem, choices: [{label, text}]}, answerKey}
NESTED_CHOICES = dict(
    type="multiple_choice",
    context="question.stem",
    choices="question.choices",
    choice_text="text",
    choice_label="label",
    label="answerKey",
)


def spec(**task):
    return validate_dict(
        {"model": MINILM, "task": task, "data": {"files": {"train": "t.jsonl", "validation": "v.jsonl"}}}
    ).task


def test_entailment_layout_is_cls_premise_sep_hypothesis_sep(tokenizer):
    task = build_task(spec(type="entailment", text_a="p", text_b="h", labels=["yes", "no"]), ["yes", "no"])
    features = task.format({"p": ["it rains"], "h": ["it is wet"], "label": ["no"]}, tokenizer, 32)
    tokens = tokenizer.convert_ids_to_tokens(features["input_ids"][0])
    assert tokens == ["[CLS]", "it", "rains", "[SEP]", "it", "is", "wet", "[SEP]"]
    assert features["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1, 1] and features["labels"] == [1]


def test_similarity_formats_both_orderings(tokenizer):
    task = build_task(spec(type="similarity", text_a="a", text_b="b", target="score"), None)
    features = task.format({"a": ["red car"], "b": ["blue bus"], "label": ["3.5"]}, tokenizer, 32)
    first, second = (tokenizer.convert_ids_to_tokens(ids) for ids in features["input_ids"][0])
    assert first == ["[CLS]", "red", "car", "[SEP]", "blue", "bus", "[SEP]"]
    assert second == ["[CLS]", "blue", "bus", "[SEP]", "red", "car", "[SEP]"]
    assert features["labels"] == [3.5]


def test_similarity_prediction_is_order_invariant(tokenizer, tiny_bert):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1).eval()
    task = build_task(spec(type="similarity", text_a="a", text_b="b", target="score"), None)
    collate = task.collator(tokenizer, None)
    rows = {"a": ["a man plays a guitar", "the cat sleeps"], "b": ["someone plays music", "a dog barks loudly"]}
    swapped = {"a": rows["b"], "b": rows["a"]}

    def predict(columns):
        features = task.format(columns, tokenizer, 64)
        return task.forward(model, collate([dict(zip(features, v)) for v in zip(*features.values())]))[1]

    assert torch.allclose(predict(rows), predict(swapped), atol=1e-6)


@pytest.mark.parametrize("kind", ["tiny_bert", "tiny_electra"])
def test_similarity_is_the_head_on_the_sum_of_both_orderings_representations(kind, request, tokenizer):
    """GPT-1: head(h_ab + h_ba), for BERT's linear head on the pooled state (its bias once, not twice) and for
    ELECTRA's head with layers of its own (dense, GELU, projection) on the first token's state."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(request.getfixturevalue(kind), num_labels=2).eval()
    for name, bias in model.classifier.named_parameters():  # fresh heads start with zero biases: make them count
        if name.endswith("bias"):
            torch.nn.init.uniform_(bias.data, 0.5, 1.0)
    task = build_task(spec(type="similarity", text_a="a", text_b="b", labels=["no", "yes"]), ["no", "yes"])
    features = task.format(
        {"a": ["a man plays a guitar", "the cat"], "b": ["someone plays", "a dog barks"]}, tokenizer, 64
    )
    batch = task.collator(tokenizer, None)([dict(zip(features, v)) for v in zip(*features.values())])
    inputs = {k: v.flatten(0, 1) for k, v in batch.items() if k != "choice_mask"}  # (2B, L)
    with torch.no_grad():
        if kind == "tiny_bert":
            representations = model.bert(**inputs).pooler_output  # (2B, H)
        else:
            representations = model.electra(**inputs).last_hidden_state  # (2B, L, H); the head reads position 0
        expected = model.classifier(representations.view(2, 2, *representations.shape[1:]).sum(1))
        assert torch.allclose(task.forward(model, batch)[1], expected, atol=1e-6)


def test_group_collator_masks_missing_candidates():
    batch = GroupCollator(pad_token_id=0)(
        [
            {"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 1], [1]], "labels": 1},
            {"input_ids": [[9], [10], [11, 12]], "attention_mask": [[1], [1], [1, 1]], "labels": 2},
        ]
    )
    assert batch["input_ids"].shape == (2, 3, 3)
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["attention_mask"][0, 1].tolist() == [1, 0, 0]


def test_multiple_choice_softmax_is_over_each_examples_own_candidates(tokenizer, tiny_bert):
    from transformers import AutoModelForMultipleChoice

    task = build_task(spec(type="multiple_choice", context="q", choices="options", label="answer"), None)
    model = AutoModelForMultipleChoice.from_pretrained(tiny_bert).eval()
    rows = {"q": ["pick one", "pick another"], "options": [["a", "b"], ["c", "d", "e", "f"]], "answer": [1, 3]}
    features = task.format(rows, tokenizer, 16)
    batch = task.collator(tokenizer, None)([dict(zip(features, v)) for v in zip(*features.values())])
    loss, scores = task.forward(model, batch)
    assert scores.shape == (2, 4) and torch.isinf(scores[0, 2:]).all() and torch.isfinite(scores[1]).all()
    expected = -(torch.log_softmax(scores[0, :2], -1)[1] + torch.log_softmax(scores[1], -1)[3]) / 2
    assert torch.allclose(loss.mean(), expected)
    probabilities = task.describe(scores.detach().numpy())
    assert len(probabilities[0]["probabilities"]) == 2 and len(probabilities[1]["probabilities"]) == 4
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-5 for p in probabilities)


def test_choice_layouts_map_with_recipe_fields():
    copa = json.loads((SHARED_DATA / "choice/copa/train.jsonl").read_text().splitlines()[0])
    copa_spec = spec(
        type="multiple_choice",
        context_template="{premise} What was the {question} of this?",
        choices=["choice1", "choice2"],
    )
    assert copa_spec.context_of(copa) == "My body cast a shadow over the grass. What was the cause of this?"
    assert copa_spec.candidates_of(copa) == (["The sun was rising.", "The grass was cut."], None)

    csqa = json.loads((SHARED_DATA / "choice/commonsenseqa/dev.jsonl").read_text().splitlines()[0])
    csqa_spec = spec(**NESTED_CHOICES)
    texts, names = csqa_spec.candidates_of(csqa)
    assert len(texts) == 5 and names == ["A", "B", "C", "D", "E"] and answer_index(csqa["answerKey"], names, 5) == 0
    # the Hub's layout stores candidates as a record of lists; the same fields read it
    hub_row = {"choices": {"text": texts, "label": names}}
    hub_spec = spec(type="multiple_choice", context="q", choices="choices", choice_text="text", choice_label="label")
    assert hub_spec.candidates_of(hub_row) == (texts, names)


def test_arc_has_three_to_five_candidates_and_digit_keys():
    rows = [json.loads(line) for line in (SHARED_DATA / "choice/arc_easy/dev.jsonl").read_text().splitlines()]
    arc = spec(**NESTED_CHOICES)
    counts = {len(arc.candidates_of(r)[0]) for r in rows}
    assert {3, 4, 5} <= counts
    assert all(answer_index(r["answerKey"], arc.candidates_of(r)[1], 5) is not None for r in rows)


def test_letters_and_one_based_answers_name_positional_candidates(tmp_path, capsys):
    """A letter names the first, second, ... candidate when candidates are columns or a plain list; integer answers
    running 1..K are recognised as 1-based (not the `K` rows alone flagged, the `1` rows silently shifted), and
    task.label_base: 1 reads them."""
    columns = spec(type="multiple_choice", context="q", choices=["a", "b", "c", "d"], label="answer")
    row = {"q": "?", "a": "w", "b": "x", "c": "y", "d": "z"}
    assert [columns.read_label(letter, row, None) for letter in "ABCDE"] == [0, 1, 2, 3, None]
    plain = spec(type="multiple_choice", context="q", choices="options")
    assert plain.read_label("C", {"q": "?", "options": ["u", "v", "w"]}, None) == 2
    named = spec(**NESTED_CHOICES)  # candidates with names: a letter is a name, never a position
    assert named.read_label("B", {"question": {"stem": "?", "choices": [{"text": "u", "label": "1"}]}}, None) is None

    rows = [{**row, "answer": answer} for answer in ("1", "4", "2", "3")]
    problems, _ = columns.check_rows("train", "train", rows, None)
    assert problems == [
        "task.label: the integer answers in split 'train' run from 1 to 4, with 4 naming the last candidate: they "
        "count from 1; set task.label_base: 1",
        "task.label: '4' in row 1 of split 'train' is not one of the row's candidates (by name, letter or index "
        "counted from 0)",
    ]
    one_based = spec(type="multiple_choice", context="q", choices=["a", "b", "c", "d"], label="answer", label_base=1)
    assert one_based.check_rows("train", "train", rows, None) == ([], [])
    assert [one_based.read_label(r["answer"], r, None) for r in rows] == [0, 3, 1, 2]
    zero_based = [{**row, "answer": answer} for answer in ("0", "3", "1", "2")]  # 0-based: nothing to say
    assert columns.check_rows("train", "train", zero_based, None) == ([], [])


@pytest.mark.parametrize("name", ["copa", "commonsenseqa"])
def test_multiple_choice_tiny_model_overfits(name, tmp_path, tiny_bert):
    source = {"copa": "choice/copa/train.jsonl", "commonsenseqa": "choice/commonsenseqa/train.jsonl"}[name]
    data = sample_file(tmp_path, SHARED_DATA / source, 32)
    fields = {
        "copa": "context_template: '{premise} What was the {question}?', choices: [choice1, choice2], label: label",
        "commonsenseqa": "context: question.stem, choices: question.choices, choice_text: text, "
        "choice_label: label, label: answerKey",
    }[name]
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: multiple_choice, {fields}}}
data: {{files: {{train: {data}, fit: {data}}}, eval_split: fit, max_length: 48}}
train: {{epochs: 40, batch_size: 8, lr: 2.0e-3, warmup: 0, eval_every: 80, save_every: 1000}}
""",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["accuracy"] == 1.0


@pytest.mark.parametrize("target", ["class", "score"])
def test_similarity_tiny_model_overfits(target, tmp_path, tiny_bert):
    task = "mrpc" if target == "class" else "stsb"
    data = sample_file(tmp_path, GLUE / task / "train.tsv", 33)
    columns = (
        "text_a: '#1 String', text_b: '#2 String', label: Quality"
        if task == "mrpc"
        else "text_a: sentence1, text_b: sentence2, label: score"
    )
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: similarity, target: {target}, {columns}}}
data: {{files: {{train: {data}, fit: {data}}}, eval_split: fit, reader: {{quoting: none}}}}
train: {{epochs: 40, batch_size: 8, lr: 3.0e-3, warmup: 0, eval_every: 80, save_every: 1000}}
""",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    if target == "class":
        assert result.metrics["accuracy"] == 1.0
    else:
        assert result.metrics["pearson"] > 0.9
    # the saved model is a plain sequence classifier; eval reproduces the run's metric
    assert run_cli("eval", tmp_path / "run").metrics == pytest.approx(
        {k: v for k, v in result.metrics.items() if k in ("accuracy", "pearson", "spearman", "eval_loss")}, abs=1e-6
    )


def test_multiple_choice_predict_names_the_answer(tmp_path, tiny_bert):
    data = sample_file(tmp_path, SHARED_DATA / "choice/copa/train.jsonl", 16)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: multiple_choice, context: premise, choices: [choice1, choice2]}}
data: {{files: {{train: {data}, validation: {data}}}}}
train: {{epochs: 1, batch_size: 8, save_every: 1000}}
""",
    )
    run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert run_cli("predict", tmp_path / "run", "--input", data, "--output", tmp_path / "out.jsonl").exit_code == 0
    predictions = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(predictions) == 16
    for record in predictions:
        assert record["answer"] in (0, 1) and len(record["probabilities"]) == 2
        assert record["answer"] == int(np.argmax(record["probabilities"]))
