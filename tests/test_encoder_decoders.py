"""Encoder-decoders: T5 as text to text (task prefix, class words, constrained scoring), T5's and BART's
classification heads, multiple choice on both; tiny models built from configs."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import GLUE, MINILM, SHARED_DATA, recipe_file, run_cli, sample_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from finetune.pipeline import predict
from finetune.recipe import validate_dict
from finetune.tasks import TextToText, build_task


def text_task(labels=None, **task) -> TextToText:
    spec = validate_dict(
        {
            "model": MINILM,
            "task": {"head": "text_to_text", **task},
            "data": {"files": {"train": "t.jsonl", "validation": "v.jsonl"}},
        }
    ).task
    return build_task(spec, labels)


def rows_of(features: dict) -> list[dict]:
    return [dict(zip(features, values)) for values in zip(*features.values())]


def test_sources_follow_t5s_layout(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    task = text_task(["negative", "positive"], type="classification", text_a="sentence", prefix="sst2")
    row = {"sentence": ["a fine film"], "label": ["1"]}
    features = task.format(row, tokenizer, 32)
    assert task.sources({"sentence": "a fine film"}) == ["sst2 sentence: a fine film"]
    assert features["input_ids"] == [[tokenizer("sst2 sentence: a fine film")["input_ids"]]]
    assert features["target_ids"] == [[tokenizer(text_target=w)["input_ids"] for w in ("negative", "positive")]]
    assert features["labels"] == [1]

    task = text_task(["entailment", "not_entailment"], type="entailment", text_a="p", text_b="h", prefix="rte")
    assert task.sources({"p": "it rains", "h": "it is wet"}) == ["rte p: it rains h: it is wet"]

    task = text_task(["no", "yes"], type="similarity", text_a="sentence1", text_b="sentence2", prefix="mrpc")
    assert task.sources({"sentence1": "red car", "sentence2": "blue bus"}) == [
        "mrpc sentence1: red car sentence2: blue bus",
        "mrpc sentence1: blue bus sentence2: red car",  # names keep their places; the texts swap
    ]

    task = text_task(["no", "yes"], type="classification", text_a="s", verbalizer={"no": " bad", "yes": " good"})
    assert task.class_words == ["bad", "good"]

    task = text_task(type="multiple_choice", context="q", choices=["c1", "c2"], prefix="copa")
    features = task.format({"q": ["sky is"], "c1": ["blue"], "c2": ["green sky"], "label": [0]}, tokenizer, 32)
    assert task.sources({"q": "sky is"}) == ["copa sky is"]
    assert features["target_ids"] == [[tokenizer(text_target=t)["input_ids"] for t in ("blue", "green sky")]]


def test_constrained_scores_are_the_targets_log_likelihoods(tiny_t5):
    """Each score equals log p(target | source) computed independently by the model's own LM loss."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    task = text_task(["no", "yes"], type="similarity", text_a="a", text_b="b", verbalizer={"no": "not same"})
    columns = {
        "a": ["a man plays", "the cat sleeps soundly"],
        "b": ["someone plays music", "dogs bark"],
        "label": [1, 0],
    }
    features = task.format(columns, tokenizer, 32)
    batch = task.collator(tokenizer, None)(rows_of(features))
    with torch.no_grad():
        loss, scores = task.forward(model, batch)

        def log_likelihood(source: str, target: str) -> float:
            ids = tokenizer(source, return_tensors="pt")
            labels = tokenizer(text_target=target, return_tensors="pt")["input_ids"]
            return -model(**ids, labels=labels).loss.item() * labels.shape[1]  # the loss is the mean per token

        for row in range(2):
            sources = task.sources({"a": columns["a"][row], "b": columns["b"][row]})
            for k, word in enumerate(["not same", "yes"]):
                expected = sum(log_likelihood(source, word) for source in sources)  # both orderings add
                assert scores[row, k].item() == pytest.approx(expected, abs=1e-4)
        right_tokens = [len(tokenizer(text_target=w)["input_ids"]) * 2 for w in ("yes", "not same")]
        expected_loss = -sum(scores[r, label].item() / right_tokens[r] for r, label in enumerate([1, 0])) / 2
    assert loss.mean().item() == pytest.approx(expected_loss, abs=1e-5)


def test_t5_learns_classification_as_text_and_reloads(tmp_path, tiny_t5, sst2_rows):
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_t5}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive], prefix: sst2}}
data: {{files: {{train: {sst2_rows}, fit: {sst2_rows}}}, eval_split: fit, max_length: 64, reader: {{quoting: none}}}}
train: {{epochs: 30, batch_size: 8, lr: 3.0e-3, warmup: 0, eval_every: 40, save_every: 1000}}
""",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["accuracy"] == 1.0
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["task"]["head"] == "text_to_text"  # auto, resolved from the T5 config and written out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["architectures"] == ["T5ForConditionalGeneration"]
    assert run_cli("eval", tmp_path / "run").metrics["accuracy"] == 1.0
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"sentence": "a gorgeous , witty , seductive movie ."}) + "\n")
    [record] = predict(tmp_path / "run", inputs)
    assert record["label"] in ("negative", "positive")
    assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_t5_classifier_head_and_bart_multiple_choice(tmp_path, tiny_t5, tiny_bart):
    stsb = sample_file(tmp_path, GLUE / "stsb" / "train.tsv", 17)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_t5}
task: {{type: similarity, target: score, text_a: sentence1, text_b: sentence2, label: score}}
data: {{files: {{train: {stsb}, fit: {stsb}}}, eval_split: fit, reader: {{quoting: none}}}}
train: {{epochs: 40, batch_size: 8, lr: 3.0e-3, warmup: 0, eval_every: 80, save_every: 1000}}
""",
        "sim.yaml",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'sim'}")  # a score: auto picks the classifier
    assert result.metrics["pearson"] > 0.9
    config = json.loads((tmp_path / "sim" / "config.json").read_text())
    assert config["architectures"] == ["T5ForSequenceClassification"]

    copa = sample_file(tmp_path, SHARED_DATA / "choice/copa/train.jsonl", 16)
    for model, head, lr in ((tiny_bart, "auto", "2.0e-3"), (tiny_t5, "text_to_text", "3.0e-3")):
        recipe = recipe_file(
            tmp_path,
            f"""
model: {model}
task: {{type: multiple_choice, context: premise, choices: [choice1, choice2], label: label, head: {head}}}
data: {{files: {{train: {copa}, fit: {copa}}}, eval_split: fit, max_length: 48}}
train: {{epochs: 40, batch_size: 8, lr: {lr}, warmup: 0, eval_every: 80, save_every: 1000}}
""",
            "mc.yaml",
        )
        out = tmp_path / f"mc-{head}"
        assert run_cli("train", recipe, f"output_dir={out}").metrics["accuracy"] == 1.0
        assert run_cli("eval", out).metrics["accuracy"] == 1.0


def test_zero_shot_on_a_text_to_text_checkpoint(tmp_path, tiny_t5):
    rte = sample_file(tmp_path, GLUE / "rte" / "dev.tsv", 17)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_t5}
task: {{type: entailment, text_a: sentence1, text_b: sentence2, labels: [entailment, not_entailment], prefix: rte}}
data: {{files: {{train: {rte}, validation: {rte}}}, reader: {{quoting: none}}}}
""",
    )
    metrics = run_cli("eval", recipe, "--zero-shot", "--output", tmp_path / "zero-shot").metrics
    assert metrics["num_examples"] == 16 and 0 <= metrics["accuracy"] <= 1 and metrics["eval_loss"] > 0


def test_inspect_marks_the_right_target(tmp_path, tiny_t5, sst2_rows, capsys):
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_t5}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive], prefix: sst2}}
data: {{files: {{train: {sst2_rows}, validation: {sst2_rows}}}, reader: {{quoting: none}}}}
""",
    )
    assert run_cli("inspect", recipe, "-n", "1").exit_code == 0
    out = capsys.readouterr().out
    assert " source 0:" in out and ("targets  negative* | positive" in out or "targets  negative | positive*" in out)


@pytest.mark.parametrize(
    "model, task, message",
    [
        ("bert", "head: text_to_text", "task.head: text_to_text needs an encoder-decoder checkpoint"),
        ("bart", "prefix: sst2", "task.prefix: only the text_to_text head reads a task prefix"),
        (
            "t5",
            "head: text_to_text, labels: null, type: similarity, text_b: s2, target: score",
            "task.head: text_to_text writes",
        ),
    ],
)
def test_head_mistakes_are_one_line_errors(model, task, message, tmp_path, sst2_rows, request, capsys):
    folder = request.getfixturevalue(f"tiny_{model}")
    base = {"type": "classification", "text_a": "sentence", "label": "label", "labels": ["negative", "positive"]}
    settings = json.dumps({**base, **yaml.safe_load(f"{{{task}}}")})  # the case's keys replace the base's
    recipe = recipe_file(
        tmp_path,
        f"""
model: {folder}
task: {settings}
data: {{files: {{train: {sst2_rows}, validation: {sst2_rows}}}, reader: {{quoting: none}}}}
""",
    )
    assert run_cli("validate", recipe).exit_code == 2
    assert message in capsys.readouterr().err
