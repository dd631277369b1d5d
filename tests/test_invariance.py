"""The engine's equivalences, for every task type on the families that run it (tests/cases.py): gradient
accumulation equals a larger batch, several processes equal one, packed equals unpacked. Dropout is off, so that the
runs compared differ only in how the work is split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cases import BY_NAME, CASES, STREAMED, max_difference, train, weights, without_dropout
from conftest import REPO

TOLERANCE = 1e-6  # relative to the largest weight; the defects guarded move weights by ~1e-4 of it
# AdamW divides each gradient component by its own size, which hides a gradient scaled by mistake and magnifies
# float noise in components near zero; with an epsilon far above the gradients, the update is proportional to them.
PROPORTIONAL = {"adam_eps": 1.0, "lr": 0.1}


@pytest.fixture()
def no_dropout(monkeypatch):
    """Dropout layers pass their input through (the checkpoints' configs turn the functional dropouts off)."""
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)


def case_model(case, request, tmp_path_factory):
    return without_dropout(request.getfixturevalue(case.model), tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_accumulated_micro_batches_equal_one_large_batch(case, request, tmp_path, tmp_path_factory, no_dropout):
    """Batch 6 against 3 micro-batches of 2: 10 examples are one full accumulation and one ragged one (2 of 3
    micro-batches). The micro-batches hold different numbers of target tokens, so only a step's loss divided by
    the step's items (not a mean of micro-batch means, nor a ragged step scaled by 2/3) gives the same weights.
    (That the same seed gives identical weights is proven for every case by tests/test_invariance_runs.py: the
    interrupted run starts afresh with the recipe's seed and must end bit-identical to the uninterrupted one.)"""
    model = case_model(case, request, tmp_path_factory)
    large = train(case.recipe(tmp_path, model, **PROPORTIONAL))
    accumulated = train(case.recipe(tmp_path, model, batch_size=2, grad_accum=3, **PROPORTIONAL))
    assert large.metrics["train_steps"] == accumulated.metrics["train_steps"] == 2
    difference, scale = max_difference(weights(large.run_dir), weights(accumulated.run_dir))
    assert difference <= TOLERANCE * scale
    # the tokens counted in the batches trained on are those the length report counts in the tokenized split
    # (text to text runs each source with each candidate target, and counts those rows; span corruption counts the
    # corrupted inputs and their targets); smaller batches pad less (each pads to its own longest), never more
    built_in_batches = ("text-to-text", "span-corruption-encoder-decoder")
    for metrics in (large.metrics, accumulated.metrics):
        assert metrics["train_real_tokens"] > 0
        assert case.name in built_in_batches or metrics["train_real_tokens"] == metrics["train_tokens_kept"]
        assert metrics["train_padding_share"] == round(
            1 - metrics["train_real_tokens"] / metrics["train_computed_tokens"], 4
        )
    assert accumulated.metrics["train_computed_tokens"] <= large.metrics["train_computed_tokens"]


@pytest.mark.parametrize("name", ["seq2seq-decoder", "instruction-decoder"])
def test_packed_batches_train_as_padded_ones(name, request, tmp_path, tmp_path_factory, no_dropout):
    """Packing changes the layout, not the loss: the same examples packed into rows train the same weights, computing
    no more tokens than padding each to the batch's longest."""
    case = BY_NAME[name]
    model = case_model(case, request, tmp_path_factory)
    padded_recipe = case.recipe(tmp_path, model, **PROPORTIONAL)
    padded_recipe["data"]["packing"] = False
    padded = train(padded_recipe)
    packed = train(case.recipe(tmp_path, model, **PROPORTIONAL))  # data.packing: auto packs on Llama
    assert "packing: true" in (packed.run_dir / "recipe.yaml").read_text()
    difference, scale = max_difference(weights(padded.run_dir), weights(packed.run_dir))
    assert difference <= TOLERANCE * scale
    assert packed.metrics["train_real_tokens"] == padded.metrics["train_real_tokens"]
    assert packed.metrics["train_computed_tokens"] <= padded.metrics["train_computed_tokens"]
    assert padded.metrics["train_padding_share"] > 0


@pytest.mark.parametrize("name", ["streamed-classification-encoder", "seq2seq-decoder"])
def test_two_processes_equal_one_with_twice_the_batch(name, request, tmp_path, tmp_path_factory):
    """Two CPU processes with batch 1 each against one with batch 2: the same loss at every step, the same
    weights and the same evaluation. The two processes' examples hold different numbers of target tokens, so only
    a loss divided by the items of both processes gives the same gradient; 3 evaluation examples in batches of 1
    make one process repeat an example to even out the last batch, which the evaluation must not count. A stream
    (data.streaming) is read by each process in the same order, each keeping its share of every global batch."""
    case = BY_NAME[name]
    model = case_model(case, request, tmp_path_factory)
    steps = {"log_every": 1, "eval_batch_size": 1, "max_steps": 5, "group_by_length": False, **PROPORTIONAL}
    one = train(evaluating_three(case.recipe(tmp_path, model, batch_size=2, **steps)))
    recipe = evaluating_three(case.recipe(tmp_path, model, batch_size=1, **steps))
    (tmp_path / "two.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/ddp.yaml")]
    done = subprocess.run(
        [*launch, "-m", "finetune", "train", str(tmp_path / "two.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batch 1 x 2 devices (MULTI_CPU) x 1 accum = 2/step" in done.stderr
    two = Path(recipe["output_dir"])
    assert step_losses(two) == pytest.approx(step_losses(one.run_dir), rel=1e-5) and len(step_losses(two)) == 5
    difference, scale = max_difference(weights(one.run_dir), weights(two))
    assert difference <= TOLERANCE * scale
    evaluated = json.loads((two / "metrics.json").read_text())
    assert evaluated["eval_loss"] == pytest.approx(one.metrics["eval_loss"], rel=1e-5)


def evaluating_three(recipe: dict) -> dict:
    return {**recipe, "data": {**recipe["data"], "max_eval_samples": 3}}


def step_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_case_names_are_unique():
    assert len(BY_NAME) == len(CASES) + len(STREAMED)
