"""Training on tiny models built from configs: learning, overfitting, reproducibility, resume, eval, predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import GLUE, recipe_file, run_cli, sample_file
from safetensors.torch import load_file


def tiny_recipe(tmp_path: Path, model: Path, rows: Path, **train: object) -> Path:
    settings = {
        "epochs": 30,
        "batch_size": 8,
        "lr": 1.0e-3,
        "warmup": 0,
        "eval_every": 40,
        "save_every": 1000,
        "log_every": 4,
        **train,
    }
    lines = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in settings.items())
    return recipe_file(
        tmp_path,
        f"""
model: {model}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive]}}
data:
  files: {{train: {rows}, fit: {rows}}}
  eval_split: fit
  max_length: 64
  reader: {{quoting: none}}
train:
{lines}
""",
    )


@pytest.mark.parametrize("kind", ["tiny_bert", "tiny_electra"])
def test_tiny_models_overfit_32_examples(kind, request, tmp_path, sst2_rows):
    model = request.getfixturevalue(kind)
    result = run_cli("train", tiny_recipe(tmp_path, model, sst2_rows), f"output_dir={tmp_path / 'run'}")
    assert result.exit_code == 0
    assert result.metrics["accuracy"] == 1.0  # evaluated on the same 32 training rows
    losses = [
        r["loss"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert losses[-1] < losses[0] / 4


def test_run_folder_holds_a_loadable_model_and_flat_metrics(tmp_path, tiny_bert, sst2_rows):
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    result = run_cli("train", tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=2), f"output_dir={run}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == result.metrics
    assert {"accuracy", "eval_loss", "train_runtime_s", "train_samples_per_second", "num_train_samples"} <= set(metrics)
    assert all(not isinstance(v, dict | list) for v in metrics.values())
    assert metrics["num_train_samples"] == 32
    model = AutoModelForSequenceClassification.from_pretrained(run)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert (run / "recipe.yaml").is_file() and (run / "training.png").stat().st_size > 0
    assert "lr: 0.001" in (run / "recipe.yaml").read_text()


def _weights(run: Path) -> dict[str, list]:
    return {k: v.tolist() for k, v in load_file(run / "model.safetensors").items()}


def test_eval_and_predict_agree_with_the_run(tmp_path, tiny_bert, sst2_rows):
    run = tmp_path / "run"
    trained = run_cli(
        "train",
        tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=2, select_best=False, save_every="epoch"),
        f"output_dir={run}",
        "data.max_train_samples=30",  # eval loads only the evaluation split; the train cap must not trip it
    )
    evaluated = run_cli("eval", run)
    assert evaluated.metrics["accuracy"] == trained.metrics["accuracy"]
    checkpoint = next((run / "checkpoints").iterdir())
    assert run_cli("eval", checkpoint).metrics["accuracy"] == trained.metrics["accuracy"]  # last checkpoint = final

    rows = [dict(zip(["sentence", "label"], line.split("\t"))) for line in sst2_rows.read_text().splitlines()[1:]]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in rows))
    assert run_cli("predict", run, "--input", inputs, "--output", tmp_path / "out.jsonl").exit_code == 0
    predictions = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(predictions) == 32
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    assert all(p["label"] == max(p["probabilities"], key=p["probabilities"].get) for p in predictions)
    names = ["negative", "positive"]
    accuracy = sum(p["label"] == names[int(r["label"])] for p, r in zip(predictions, rows)) / 32
    assert accuracy == pytest.approx(trained.metrics["accuracy"])


def test_regression_on_real_stsb_pairs(tmp_path, tiny_bert):
    data = sample_file(tmp_path, GLUE / "stsb" / "train.tsv", 33)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: regression, text_a: sentence1, text_b: sentence2, label: score}}
data: {{files: {{train: {data}, fit: {data}}}, eval_split: fit, reader: {{quoting: none}}}}
train: {{epochs: 40, batch_size: 8, lr: 3.0e-3, warmup: 0, save_every: 1000, eval_every: 80}}
""",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["pearson"] > 0.8 and "spearman" in result.metrics


def test_early_stopping_stops_and_keeps_the_best(tmp_path, tiny_bert, sst2_rows):
    recipe = tiny_recipe(
        tmp_path,
        tiny_bert,
        sst2_rows,
        epochs=50,
        lr=1.0e-6,
        eval_every=4,
        early_stopping={"patience": 2, "min_delta": 0.5},
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["train_steps"] == 12  # evals at 4, 8, 12: no 0.5 gain after the first, so stop
    assert result.metrics["best_step"] == 4


def test_truncated_inputs_are_counted(tmp_path, tiny_bert, sst2_rows):
    """metrics.json counts the input tokens of the training rows as read and as kept at data.max_length, checked
    against the tokenizer run on the sentences directly."""
    from transformers import AutoTokenizer

    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    result = run_cli("train", recipe, "data.max_length=8", f"output_dir={tmp_path / 'run'}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    sentences = [line.split("\t")[0] for line in sst2_rows.read_text().splitlines()[1:]]
    lengths = [len(tokenizer(s)["input_ids"]) for s in sentences]
    assert any(n > 8 for n in lengths) and any(n <= 8 for n in lengths)
    assert result.metrics["train_tokens_in"] == sum(lengths)
    assert result.metrics["train_tokens_kept"] == sum(min(n, 8) for n in lengths)
    assert result.metrics["train_tokens_dropped"] == sum(lengths) - sum(min(n, 8) for n in lengths)
    assert json.loads((result.run_dir / "lengths.json").read_text())["train"]["tokens"]["in"] == sum(lengths)
    assert result.metrics["train_examples_truncated"] == sum(n > 8 for n in lengths)


def test_fp16_on_cpu_is_a_clear_error(tmp_path, tiny_bert, sst2_rows, capsys):
    result = run_cli(
        "train", tiny_recipe(tmp_path, tiny_bert, sst2_rows), "train.precision=fp16", f"output_dir={tmp_path / 'run'}"
    )
    assert result.exit_code == 2
    assert "train.precision: fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bf16_trains_on_cpu(tmp_path, tiny_bert, sst2_rows):
    result = run_cli(
        "train",
        tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1, precision="bf16"),
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.exit_code == 0 and result.metrics["train_steps"] == 4


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, tiny_bert, sst2_rows):
    plain = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    run_cli("train", plain, f"output_dir={tmp_path / 'plain'}")
    run_cli("train", plain, "train.gradient_checkpointing=true", f"output_dir={tmp_path / 'ckpt'}")
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    import numpy as np

    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_non_empty_run_folder_is_refused_unless_overwrite(tmp_path, tiny_bert, sst2_rows, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    assert run_cli("train", recipe, f"output_dir={run}").exit_code == 2
    assert "is not empty" in capsys.readouterr().err and (run / "keep.txt").exists()
    assert run_cli("train", recipe, f"output_dir={run}", "--overwrite").exit_code == 2  # not a run folder of ours
    assert "is not a run folder" in capsys.readouterr().err and (run / "keep.txt").exists()
    (run / "keep.txt").unlink()
    assert run_cli("train", recipe, f"output_dir={run}").exit_code == 0  # an empty folder is taken
    (run / "keep.txt").write_text("left in a run folder")
    assert run_cli("train", recipe, f"output_dir={run}", "--overwrite").exit_code == 0
    assert not (run / "keep.txt").exists()
    shutil.rmtree(run)


def test_ablations_random_init_and_pretrained_layers(tiny_bert):
    """init: random gives the architecture fresh weights; pretrained_layers keeps only the first blocks."""
    from finetune.mirrors import resolve_model
    from finetune.model import build_model
    from finetune.recipe import validate_dict
    from finetune.tasks import build_task

    def build(**model):
        recipe = validate_dict(
            {
                "model": {"name": str(tiny_bert), **model},
                "task": {"type": "classification", "text_a": "s", "labels": ["a", "b"]},
                "data": {"files": {"train": "t.csv", "validation": "v.csv"}},
            }
        )
        torch.manual_seed(1)
        return build_model(recipe, resolve_model(str(tiny_bert)), build_task(recipe.task, ["a", "b"]))

    pretrained = load_file(tiny_bert / "model.safetensors")
    same = lambda model, key: torch.equal(model.state_dict()[f"bert.{key}"], pretrained[key])  # noqa: E731
    full, random, first = build(), build(init="random"), build(pretrained_layers=1)
    block0, block1 = "encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"
    assert same(full, block0) and same(full, block1) and same(full, "embeddings.word_embeddings.weight")
    assert not same(random, block0) and not same(random, "embeddings.word_embeddings.weight")
    assert same(first, block0) and same(first, "embeddings.word_embeddings.weight") and not same(first, block1)


def test_resume_without_output_dir_continues_the_newest_run(tmp_path, tiny_bert, sst2_rows, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1, save_every=2)
    first = run_cli("train", recipe)
    run_dirs = list((tmp_path / "runs" / "recipe").iterdir())
    assert len(run_dirs) == 1 and first.run_dir.resolve() == run_dirs[0].resolve()
    assert run_cli("train", recipe, "--resume", "train.epochs=2").exit_code == 2  # a schedule for 1 epoch ran
    resumed = run_cli("train", recipe, "--resume")
    assert resumed.run_dir.resolve() == run_dirs[0].resolve() and resumed.metrics["train_steps"] == 4


@pytest.mark.parametrize("task", ["classification", "similarity"])
def test_bart_classifies_with_its_own_head(task, tmp_path, tiny_bart, sst2_rows):
    """Encoder-decoder: BART's classification head (same input to encoder and decoder, head on the final eos)."""
    if task == "classification":
        rows, fields = sst2_rows, "text_a: sentence, label: label"
    else:
        rows, fields = (
            sample_file(tmp_path, GLUE / "mrpc" / "train.tsv", 33),
            "text_a: '#1 String', text_b: '#2 String', label: Quality",
        )
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bart}
task: {{type: {task}, {fields}}}
data: {{files: {{train: {rows}, fit: {rows}}}, eval_split: fit, max_length: 64, reader: {{quoting: none}}}}
train: {{epochs: 30, batch_size: 8, lr: 2.0e-3, warmup: 0, eval_every: 40, save_every: 1000}}
""",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["accuracy"] == 1.0
    assert run_cli("eval", tmp_path / "run").metrics["accuracy"] == 1.0
