"""Decoders (GPT-2, Llama-style) with GPT-1's tokens and extract-token head, on tiny models built from configs."""

from __future__ import annotations

import pytest
import torch
from conftest import GLUE, MINILM, SHARED_DATA, recipe_file, run_cli, sample_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.heads import GPT1_TOKENS, ExtractTokenModel, add_gpt1_tokens, extract_positions
from finetune.recipe import validate_dict
from finetune.tasks import build_task


def decoder_task(**task):
    spec = validate_dict({"model": MINILM, "task": task, "data": {"files": {"train": "t.csv", "validation": "v.csv"}}})
    built = build_task(spec.task, spec.task.labels)
    return built


def test_gpt1_layouts_for_decoders(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    ids = add_gpt1_tokens(tokenizer)
    start, delim, extract = GPT1_TOKENS["start"], GPT1_TOKENS["delim"], GPT1_TOKENS["extract"]

    def tokens(features, index=0):
        return tokenizer.convert_ids_to_tokens(features["input_ids"][index])

    task = decoder_task(type="classification", text_a="s", labels=["no", "yes"])
    task.gpt1_ids = ids
    assert tokens(task.format({"s": ["a fine film"]}, tokenizer, 32)) == [start, "a", "fine", "film", extract]

    task = decoder_task(type="entailment", text_a="p", text_b="h", labels=["no", "yes"])
    task.gpt1_ids = ids
    assert tokens(task.format({"p": ["it rains"], "h": ["it is wet"]}, tokenizer, 32)) == [
        start,
        "it",
        "rains",
        delim,
        "it",
        "is",
        "wet",
        extract,
    ]

    task = decoder_task(type="similarity", text_a="a", text_b="b", target="score")
    task.gpt1_ids = ids
    both = task.format({"a": ["red car"], "b": ["blue bus"]}, tokenizer, 32)["input_ids"][0]
    assert [tokenizer.convert_ids_to_tokens(x) for x in both] == [
        [start, "red", "car", delim, "blue", "bus", extract],
        [start, "blue", "bus", delim, "red", "car", extract],
    ]

    task = decoder_task(type="multiple_choice", context="q", choices=["c1", "c2"])
    task.gpt1_ids = ids
    candidates = task.format({"q": ["sky is"], "c1": ["blue"], "c2": ["green"]}, tokenizer, 32)["input_ids"][0]
    assert [tokenizer.convert_ids_to_tokens(x) for x in candidates] == [
        [start, "sky", "is", delim, "blue", extract],
        [start, "sky", "is", delim, "green", extract],
    ]

    long = task.encode(tokenizer, 8, "one two three four five six", "seven eight")
    assert len(long["input_ids"]) == 8 and long["input_ids"][-1] == ids["extract"]  # truncated, [extract] kept


@pytest.mark.parametrize("kind", ["tiny_gpt2", "tiny_llama"])
def test_extract_head_reads_the_same_token_under_left_and_right_padding(kind, request):
    folder = request.getfixturevalue(kind)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = add_gpt1_tokens(tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(folder)
    lm.resize_token_embeddings(len(tokenizer))
    model = ExtractTokenModel(lm, 3, ids["extract"], 0.0, "single_label_classification").eval()
    short = [ids["start"], 2023, 2003, ids["extract"]]
    long = [ids["start"], 2023, 2003, 1037, 2460, 6251, ids["extract"]]
    pad = tokenizer.pad_token_id

    def batch(left: bool):
        rows = [short, long]
        width = max(map(len, rows))
        padded = [([pad] * (width - len(r)) + r) if left else (r + [pad] * (width - len(r))) for r in rows]
        mask = [
            ([0] * (width - len(r)) + [1] * len(r)) if left else ([1] * len(r) + [0] * (width - len(r))) for r in rows
        ]
        return torch.tensor(padded), torch.tensor(mask)

    right_ids, right_mask = batch(left=False)
    left_ids, left_mask = batch(left=True)
    assert extract_positions(right_ids, ids["extract"]).tolist() == [3, 6]
    assert extract_positions(left_ids, ids["extract"]).tolist() == [6, 6]
    with torch.no_grad():
        right = model(input_ids=right_ids, attention_mask=right_mask).logits
        left = model(input_ids=left_ids, attention_mask=left_mask).logits
    assert torch.allclose(right, left, atol=1e-5)


def test_aux_loss_is_the_weighted_lm_loss_on_the_same_batch(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    ids = add_gpt1_tokens(tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    lm.resize_token_embeddings(len(tokenizer))
    model = ExtractTokenModel(lm, 2, ids["extract"], 0.5, "single_label_classification").eval()
    input_ids = torch.tensor([[ids["start"], 2023, 2003, ids["extract"]], [ids["start"], 2023, ids["extract"], 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        lm_loss = lm(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
        task = torch.nn.functional.cross_entropy(output.logits, labels)
    assert torch.allclose(output.aux_loss, 0.5 * lm_loss, atol=1e-6)
    assert torch.allclose(output.loss, task + 0.5 * lm_loss, atol=1e-6)


@pytest.mark.parametrize("kind", ["tiny_gpt2", "tiny_llama"])
def test_decoders_overfit_classification_and_reload(kind, request, tmp_path, sst2_rows):
    model = request.getfixturevalue(kind)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {model}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive], aux_lm_weight: 0.5}}
data: {{files: {{train: {sst2_rows}, fit: {sst2_rows}}}, eval_split: fit, max_length: 64, reader: {{quoting: none}}}}
train: {{epochs: 30, batch_size: 8, lr: 3.0e-3, warmup: 0, eval_every: 40, save_every: 1000}}
""",
    )
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["accuracy"] == 1.0
    assert (tmp_path / "run" / "extract_head.safetensors").is_file()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert all(token in reloaded.get_vocab() for token in GPT1_TOKENS.values())  # the added tokens were saved
    assert run_cli("eval", tmp_path / "run").metrics["accuracy"] == 1.0


def test_decoder_similarity_and_multiple_choice_learn(tmp_path, tiny_llama):
    stsb = sample_file(tmp_path, GLUE / "stsb" / "train.tsv", 33)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_llama}
task: {{type: similarity, target: score, text_a: sentence1, text_b: sentence2, label: score}}
data: {{files: {{train: {stsb}, fit: {stsb}}}, eval_split: fit, reader: {{quoting: none}}}}
train: {{epochs: 40, batch_size: 8, lr: 3.0e-3, warmup: 0, eval_every: 80, save_every: 1000}}
""",
        "sim.yaml",
    )
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'sim'}").metrics["pearson"] > 0.9

    copa = sample_file(tmp_path, SHARED_DATA / "choice/copa/train.jsonl", 32)
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_llama}
task: {{type: multiple_choice, context: premise, choices: [choice1, choice2], label: label}}
data: {{files: {{train: {copa}, fit: {copa}}}, eval_split: fit, max_length: 48}}
train: {{epochs: 40, batch_size: 8, lr: 3.0e-3, warmup: 0, eval_every: 80, save_every: 1000}}
""",
        "mc.yaml",
    )
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'mc'}").metrics["accuracy"] == 1.0


def test_aux_loss_on_an_encoder_is_refused(capsys):
    from conftest import REPO

    result = run_cli("validate", REPO / "recipes/glue/sst2-minilm.yaml", "--set", "task.aux_lm_weight=0.5")
    assert result.exit_code == 2
    assert "task.aux_lm_weight: the auxiliary LM loss needs a decoder" in capsys.readouterr().err


def test_decoder_checkpoint_evaluates_like_the_run(tmp_path, tiny_llama, sst2_rows):
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_llama}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive]}}
data: {{files: {{train: {sst2_rows}, validation: {sst2_rows}}}, reader: {{quoting: none}}}}
train: {{epochs: 2, batch_size: 8, lr: 1.0e-3, select_best: false, save_every: epoch}}
""",
    )
    trained = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    last = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert run_cli("eval", last).metrics == pytest.approx(
        {k: trained.metrics[k] for k in ("accuracy", "eval_loss")}, abs=1e-6
    )
