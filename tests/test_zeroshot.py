"""Zero-shot scoring: continuation log-probabilities computed independently, and the real SmolLM2 on real COPA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.zeroshot import choose, continuation_logprobs


def test_continuation_logprobs_match_a_one_at_a_time_computation(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    pairs = [("the sky is", " blue"), ("a much longer prompt about the weather today", " rather grey and cold")]
    sums, counts = continuation_logprobs(model, tokenizer, pairs, batch_size=2)  # batched, right-padded
    for (prompt, continuation), total, count in zip(pairs, sums, counts):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0]
        expected = sum(torch.log_softmax(logits[len(p) - 1 + i], -1)[token].item() for i, token in enumerate(c))
        assert count == len(c) and abs(total - expected) < 1e-4


def test_acc_and_acc_norm_pick_as_lm_evaluation_harness_defines_them():
    """One question whose three rules disagree: the sum picks B (-4), the mean per token C (-1.5), the mean per
    character of the candidate's text (the space before it not counted) A (-6 / 20)."""
    texts = [" " + "a" * 20, " bb", " " + "c" * 12]
    picks = choose(np.array([-6.0, -4.0, -9.0]), np.array([2, 1, 6]), [texts])
    assert picks == {"acc": [1], "accuracy": [2], "acc_norm": [0]}
    # -1 / 1 against -2.5 / 3 picks the second; counting the space (-1 / 2 against -2.5 / 4) would pick the first
    assert choose(np.array([-1.0, -2.5]), np.array([1, 1]), [[" a", " bbb"]])["acc_norm"] == [1]


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    """Zero-shot results go to runs/ under the working folder: a test's own."""
    monkeypatch.chdir(tmp_path)


def test_smollm2_zero_shot_on_real_copa(capsys, smollm2_converted):
    result = run_cli("eval", REPO / "recipes/smollm2/copa-smollm2.yaml", "--zero-shot")
    assert result.exit_code == 0 and result.metrics["num_examples"] == 100
    assert result.metrics["acc"] >= 0.55  # 0.65 measured; chance is 0.5
    assert 0.5 <= result.metrics["acc_norm"] <= 1
    assert 0.5 <= result.metrics["accuracy"] <= 1


def test_zero_shot_needs_a_decoder_and_class_words(capsys):
    assert run_cli("eval", REPO / "recipes/glue/sst2-minilm.yaml", "--zero-shot").exit_code == 2
    assert "zero-shot scoring reads a language model's log-probabilities" in capsys.readouterr().err
    result = run_cli("eval", REPO / "recipes/smollm2/stsb-smollm2.yaml", "--zero-shot")  # a score: no class words
    assert result.exit_code == 2 and "task.verbalizer: zero-shot classification needs" in capsys.readouterr().err


def test_zero_shot_needs_no_training_split(tmp_path, tiny_llama, capsys):
    """A recipe that names only an evaluation file scores zero-shot; training it is refused in one line."""
    from conftest import SHARED_DATA, recipe_file, sample_file

    copa = sample_file(tmp_path, SHARED_DATA / "choice/copa/train.jsonl", 6)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_llama}
task: {{type: multiple_choice, context: premise, choices: [choice1, choice2], label: label}}
data: {{files: {{validation: {copa}}}}}
""",
    )
    result = run_cli("eval", recipe, "--zero-shot")
    assert result.exit_code == 0 and result.metrics["num_examples"] == 6
    [folder] = (tmp_path / "runs" / "recipe").glob("zero-shot-*")  # results are written by default
    assert json.loads((folder / "metrics.json").read_text()) == result.metrics and (folder / "recipe.yaml").is_file()
    assert f"results: {Path('runs') / 'recipe' / folder.name}" in capsys.readouterr().out
    assert run_cli("train", recipe).exit_code == 2
    assert "error: data.train_split: split 'train' is not in data.files (validation)" in capsys.readouterr().err
