"""Every task type on the families that run it, as small recipes on tiny models without dropout, for the
invariance suite: each case is a recipe (a dict) whose data are a few real rows written into a test folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from conftest import GLUE, SHARED_DATA
from safetensors.torch import load_file

from finetune import pipeline
from finetune.recipe import validate_dict

ROWS = 10  # 2 steps of batch 6: a full accumulation of 3 micro-batches of 2, then a ragged one of 2


@dataclass(frozen=True)
class Case:
    """A task type on one family: the tiny model fixture it runs on and how its recipe reads its data."""

    name: str
    model: str  # a fixture of conftest.py
    task: dict[str, Any]
    data: Callable[[Path], dict[str, Any]]  # folder -> the recipe's data section
    generates: bool = False
    train: tuple[tuple[str, Any], ...] = ()  # settings the case needs; a test's own come on top

    def recipe(self, folder: Path, model: Path, **train: Any) -> dict[str, Any]:
        """The recipe: deterministic (no dropout, see `without_dropout`), evaluated only at its end. A distillation
        is taught by the case's model, its student built from every other block of it."""
        settings = {"batch_size": 6, "lr": 1e-2, "warmup": 0, "epochs": 1, "weight_decay": 0.0, "max_grad_norm": 0}
        settings |= {"eval_every": 1000, "save_every": 1000, "group_by_length": False, **dict(self.train), **train}
        task, name = self.task, str(model)
        if task["type"] == "distillation":
            task, name = {**task, "teacher": str(model)}, {"name": str(model), "init_from_teacher": "every_other_layer"}
        return {
            "model": name,
            "task": task,
            "data": {**self.data(folder), "max_eval_samples": 2},
            "train": settings,
            "output_dir": str(folder / f"run-{len(list(folder.glob('run-*')))}"),
            **({"generation": {"max_new_tokens": 4}} if self.generates else {}),
        }


def _tsv(folder: Path, source: Path, name: str) -> dict[str, Any]:
    lines = source.read_text(encoding="utf-8-sig").splitlines()[: ROWS + 1]
    path = folder / f"{name}.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "files": {"train": str(path), "fit": str(path)},
        "eval_split": "fit",
        "max_length": 48,
        "reader": {"quoting": "none"},
    }


def _jsonl(folder: Path, source: Path, name: str, **data: Any) -> dict[str, Any]:
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:ROWS]) + "\n", encoding="utf-8")
    return {"files": {"train": str(path), "fit": str(path)}, "eval_split": "fit", "max_length": 48, **data}


def _summaries(folder: Path) -> dict[str, Any]:
    return _jsonl(
        folder, SHARED_DATA / "seq2seq" / "dialogsum" / "dialogsum.dev.jsonl", "dialogsum", max_target_length=16
    )


def _arc(folder: Path) -> dict[str, Any]:
    """ARC rows with 3 to 5 candidates: the first rows of the dev set, with the 3- and 5-candidate rows among them."""
    rows = [json.loads(line) for line in (SHARED_DATA / "choice" / "arc_easy" / "dev.jsonl").read_text().splitlines()]
    by_count = sorted(rows, key=lambda r: len(r["question"]["choices"]) != 4)  # the rare counts last
    chosen = by_count[-3:] + by_count[: ROWS - 3]
    path = folder / "arc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
    return {"files": {"train": str(path), "fit": str(path)}, "eval_split": "fit", "max_length": 48}


def _alpaca(folder: Path) -> dict[str, Any]:
    rows = json.loads((SHARED_DATA / "instruct" / "alpaca" / "alpaca_data_1k.json").read_text())[: ROWS + 2]
    path = folder / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return {"mixture": [{"files": {"train": str(path)}, "format": "alpaca", "held_out": 2}], "max_length": 64}


ARC_TASK = {
    "type": "multiple_choice",
    "context": "question.stem",
    "choices": "question.choices",
    "choice_text": "text",
    "choice_label": "label",
    "label": "answerKey",
}
SUMMARY = {"type": "seq2seq", "prompt_template": "Dialogue: {dialogue}\nSummary:", "label": "summary"}

SST2 = {"type": "classification", "text_a": "sentence", "label": "label"}
PAIR = {"text_a": "sentence1", "text_b": "sentence2", "label": "label"}
MRPC = {"type": "similarity", "text_a": "#1 String", "text_b": "#2 String", "label": "Quality"}
AUX = {"aux_lm_weight": 0.5}


def glue(name: str) -> Callable[[Path], dict[str, Any]]:
    """The data section of the first rows of a GLUE task's training file."""
    return lambda folder: _tsv(folder, GLUE / name / "train.tsv", name)


CASES = [
    Case("classification-encoder", "tiny_bert", SST2, glue("sst2")),
    Case("classification-decoder-aux", "tiny_gpt2", SST2 | AUX, glue("sst2")),
    Case("regression-encoder", "tiny_bert", {"type": "regression", **PAIR, "label": "score"}, glue("stsb")),
    Case("entailment-encoder-decoder", "tiny_bart", {"type": "entailment", **PAIR}, glue("rte")),
    Case("similarity-encoder", "tiny_electra", MRPC, glue("mrpc")),
    Case("similarity-decoder-aux", "tiny_llama", MRPC | AUX, glue("mrpc")),
    Case("multiple-choice-encoder", "tiny_bert", ARC_TASK, _arc),
    Case("multiple-choice-decoder-aux", "tiny_gpt2", ARC_TASK | AUX, _arc),
    Case("text-to-text", "tiny_t5", SST2, glue("sst2")),
    Case("seq2seq-encoder-decoder", "tiny_t5", SUMMARY, _summaries, generates=True),
    Case("seq2seq-decoder", "tiny_llama", SUMMARY, _summaries, generates=True),
    Case("instruction-decoder", "tiny_llama", {"type": "instruction"}, _alpaca, generates=True),
    Case("language-modeling-decoder", "tiny_llama", {"type": "language_modeling", "text_a": "sentence"}, glue("sst2")),
    Case("language-modeling-encoder", "tiny_bert", {"type": "language_modeling", "text_a": "sentence"}, glue("sst2")),
    Case(
        "span-corruption-encoder-decoder", "tiny_t5", {"type": "language_modeling", "text_a": "sentence"}, glue("sst2")
    ),
    Case("distillation-encoder", "tiny_bert_sst2", {"type": "distillation", "student": SST2}, glue("sst2")),
]
# data.streaming: the training split read as a stream (epochs of unknown length, so train.max_steps; the classes
# named), shuffled and grouped by length in a seeded order
STREAMED = [
    Case(
        "streamed-classification-encoder",
        "tiny_bert",
        SST2 | {"labels": ["0", "1"]},
        lambda folder: {**glue("sst2")(folder), "streaming": True, "shuffle_buffer": 4},
        train=(("max_steps", 6), ("group_by_length", True)),
    ),
    Case(
        "streamed-language-modeling-encoder",
        "tiny_bert",
        {"type": "language_modeling", "text_a": "sentence"},
        lambda folder: {**glue("sst2")(folder), "streaming": True},
        train=(("max_steps", 6),),
    ),
]
BY_NAME = {case.name: case for case in CASES + STREAMED}


def without_dropout(checkpoint: Path, folder: Path) -> Path:
    """A copy of a tiny checkpoint whose config turns every dropout off (its weights linked, not copied)."""
    target = folder / f"{checkpoint.name}-no-dropout"
    if target.exists():
        return target
    target.mkdir()
    for item in checkpoint.iterdir():
        (target / item.name).symlink_to(item)
    config = json.loads((checkpoint / "config.json").read_text())
    for key, value in config.items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key or key == "dropout_rate"):
            config[key] = 0.0
    (target / "config.json").unlink()
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return target


def train(recipe: dict[str, Any]) -> pipeline.RunResult:
    """`finetune train` on a recipe dict, in this process."""
    return pipeline.train(validate_dict(recipe), overwrite=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every trained tensor a run folder holds: the model's and a decoder head's."""
    tensors = {}
    for name in ("model.safetensors", "extract_head.safetensors", "adapter_model.safetensors"):
        if (run_dir / name).is_file():
            tensors |= {f"{name}:{key}": value for key, value in load_file(run_dir / name).items()}
    return tensors


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """The largest difference between the same tensors of two runs, and the largest value among them."""
    assert a.keys() == b.keys()
    difference = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    scale = max(float(a[k].float().abs().max()) for k in a)
    return difference, scale
