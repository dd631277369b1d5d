"""Decoders (GPT-2, Llama-style) with GPT-1's tokens and extract-token head, on tiny models built from configs."""

from __future__ import annotations

import pytest
import torch
from conftest import GLUE, MINILM, SHARED_DATA, recipe_file, run_cli, sample_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.heads import GPT1_TOKENS, ExtractTokenModel, add_gpt1_tokens, extract_positions
from finetune.recipe import validate_dict
from finetune.tasks import build_task


def decoder_task(tokenizer=None, **task):
    """The task on a decoder whose tokenizer gets GPT-1's tokens; without a tokenizer, as for an encoder."""
    spec = validate_dict({"model": MINILM, "task": task, "data": {"files": {"train": "t.csv", "validation": "v.csv"}}})
    return build_task(spec.task, spec.task.class_names, "decoder" if tokenizer else "encoder", tokenizer=tokenizer)


def test_gpt1_layouts_for_decoders(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    start, delim, extract = GPT1_TOKENS["start"], GPT1_TOKENS["delim"], GPT1_TOKENS["extract"]

    def tokens(features, index=0):
        return tokenizer.convert_ids_to_tokens(features["input_ids"][index])

    task = decoder_task(tokenizer, type="classification", text_a="s", labels=["no", "yes"])
    assert tokens(task.format({"s": ["a fine film"]}, tokenizer, 32)) == [start, "a", "fine", "film", extract]

    task = decoder_task(tokenizer, type="entailment", text_a="p", text_b="h", labels=["no", "yes"])
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

    task = decoder_task(tokenizer, type="similarity", text_a="a", text_b="b", target="score")
    both = task.format({"a": ["red car"], "b": ["blue bus"]}, tokenizer, 32)["input_ids"][0]
    assert [tokenizer.convert_ids_to_tokens(x) for x in both] == [
        [start, "red", "car", delim, "blue", "bus", extract],
        [start, "blue", "bus", delim, "red", "car", extract],
    ]

    task = decoder_task(tokenizer, type="multiple_choice", context="q", choices=["c1", "c2"])
    candidates = task.format({"q": ["sky is"], "c1": ["blue"], "c2": ["green"]}, tokenizer, 32)["input_ids"][0]
    assert [tokenizer.convert_ids_to_tokens(x) for x in candidates] == [
        [start, "sky", "is", delim, "blue", extract],
        [start, "sky", "is", delim, "green", extract],
    ]

    # truncated, [extract] kept
    long = task.encode(tokenizer, 8, "one two three four five six", "seven eight")
    assert len(long["input_ids"]) == 8 and long["input_ids"][-1] == task.gpt1_ids["extract"]


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


def gpt1_decoder(checkpoint, aux_lm_weight: float = 0.5, num_labels: int = 1):
    """A tiny decoder under GPT-1's head, its tokenizer with GPT-1's tokens, and their ids."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = add_gpt1_tokens(tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(checkpoint)
    lm.resize_token_embeddings(len(tokenizer))
    return ExtractTokenModel(lm, num_labels, ids["extract"], aux_lm_weight, None).eval(), tokenizer, ids


def lm_loss_alone(lm, sequence: list[int]) -> tuple[float, int]:
    """A sequence's LM loss summed over its tokens (each predicted from the ones before), run alone, unpadded."""
    with torch.no_grad():
        mean = lm(input_ids=torch.tensor([sequence]), labels=torch.tensor([sequence])).loss.item()
    return mean * (len(sequence) - 1), len(sequence) - 1


def test_aux_loss_counts_real_candidates_and_no_token_predicted_from_padding(tiny_gpt2):
    """Multiple choice on a decoder: the auxiliary LM loss is the weighted sum over the real tokens of the real
    candidates, each run alone: not over the copies that pad an example with fewer candidates, and, left-padded,
    not over a [start] predicted from padding."""
    model, tokenizer, ids = gpt1_decoder(tiny_gpt2)
    task = decoder_task(
        tokenizer, type="multiple_choice", context="q", choices="options", label="answer", aux_lm_weight=0.5
    )
    rows = {"q": ["pick one", "which is longest"], "options": [["a b", "c"], ["d", "e f g", "h"]], "answer": [1, 0]}
    features = task.format(rows, tokenizer, 32)
    alone = [lm_loss_alone(model.lm, seq) for example in features["input_ids"] for seq in example]
    expected_sum, expected_tokens = 0.5 * sum(total for total, _ in alone), sum(n for _, n in alone)
    right = task.collator(tokenizer, None)([dict(zip(features, v)) for v in zip(*features.values())])
    assert right["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    lengths = right["attention_mask"].sum(-1, keepdim=True)  # (B, k, 1)
    shifts = (right["input_ids"].shape[-1] - lengths).flatten().tolist()
    left = {**right}  # the same rows padded on the left
    for key in ("input_ids", "attention_mask"):
        rows = [row.roll(shift, -1) for row, shift in zip(right[key].flatten(0, 1), shifts)]
        left[key] = torch.stack(rows).view_as(right[key])
    for batch in (right, left):
        with torch.no_grad():
            loss, _ = task.forward(model, batch)
        assert int(loss.items["lm"]) == expected_tokens == int(task.loss_items(batch)["lm"])
        assert loss.sums["lm"].item() == pytest.approx(expected_sum, rel=1e-5)


@pytest.mark.parametrize("aux_lm_weight", [0.0, 0.5])
def test_the_lm_head_runs_and_trains_only_for_the_auxiliary_loss(tiny_llama, aux_lm_weight):
    """Without the auxiliary loss no vocabulary-wide logits are computed and an untied LM head is frozen (data
    parallelism stops on a parameter that gets no gradient); with it, the LM head runs and trains."""
    model, tokenizer, ids = gpt1_decoder(tiny_llama, aux_lm_weight, num_labels=2)
    assert model.lm.get_output_embeddings().weight is not model.lm.get_input_embeddings().weight  # untied
    calls = []
    model.lm.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    task = decoder_task(tokenizer, type="classification", text_a="s", labels=["no", "yes"], aux_lm_weight=aux_lm_weight)
    features = task.format({"s": ["a fine film", "dull"], "label": ["yes", "no"]}, tokenizer, 32)
    batch = task.collator(tokenizer, None)([dict(zip(features, v)) for v in zip(*features.values())])
    loss, _ = task.forward(model.train(), batch)
    loss.mean().backward()
    assert len(calls) == (aux_lm_weight > 0)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable)
    assert any("lm_head" in name for name, _ in trainable) == (aux_lm_weight > 0)


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
