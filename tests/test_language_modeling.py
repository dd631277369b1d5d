"""task.type: language_modeling: masked LM (80-10-10, whole words), causal LM blocks that keep documents apart,
span corruption (T5's sentinels, BART's infilling), fixed evaluation masks, perplexity, and a run folder that a
later recipe fine-tunes from."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import GLUE, MINILM, recipe_file, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.columns import TOTAL_LENGTH
from finetune.errors import FinetuneError
from finetune.mirrors import resolve_model
from finetune.recipe import validate_dict
from finetune.tasks import build_task
from finetune.tasks.language_modeling import corrupt, noise_mask

SENTENCES = [line.split("\t")[0] for line in (GLUE / "sst2" / "train.tsv").read_text().splitlines()[1:2001]]


def lm_task(family: str, tokenizer=None, **task):
    spec = validate_dict(
        {
            "model": MINILM,
            "task": {"type": "language_modeling", "text_a": "sentence", **task},
            "data": {"files": {"train": "t.tsv", "validation": "v.tsv"}},
        }
    ).task.settled(family, None)
    return build_task(spec, None, family, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(MINILM).location)


def test_masked_lm_masks_fifteen_percent_eighty_ten_ten_and_fixes_evaluation_masks(minilm_tokenizer):
    tok = minilm_tokenizer
    task = lm_task("encoder", tok)
    train = task.formatter("train")({"sentence": SENTENCES}, tok, 64)
    features = [dict(zip(train, values)) for values in zip(*train.values())]
    collator = task.collator(tok, None)
    torch.manual_seed(0)
    batch = collator(features)
    original = collator.mlm.tokenizer.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt")
    ids, masked, labels = original["input_ids"], batch["labels"] != -100, batch["labels"]
    special = torch.tensor([f["special_tokens_mask"] + [1] * (ids.shape[1] - len(f["input_ids"])) for f in features])
    assert not masked[special.bool()].any()  # [CLS], [SEP] and padding are never masked
    assert torch.equal(labels[masked], ids[masked])  # the targets are the original tokens
    share = masked.sum().item() / (~special.bool()).sum().item()
    assert abs(share - 0.15) < 0.01, share  # about 28,000 maskable tokens: one standard deviation is 0.002
    as_mask = (batch["input_ids"][masked] == tok.mask_token_id).float().mean().item()
    kept = (batch["input_ids"][masked] == ids[masked]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02, (as_mask, kept)  # the rest: random tokens
    torch.manual_seed(1)
    assert not torch.equal(collator(features)["labels"], labels)  # training draws fresh masks

    evaluation = [task.formatter("eval")({"sentence": SENTENCES[:50]}, tok, 64) for _ in range(2)]
    assert evaluation[0] == evaluation[1]  # masked once, the same whatever the global generator did
    eval_batch = collator([dict(zip(evaluation[0], v)) for v in zip(*evaluation[0].values())])
    assert torch.equal(
        eval_batch["labels"], collator([dict(zip(evaluation[0], v)) for v in zip(*evaluation[0].values())])["labels"]
    )
    assert (eval_batch["labels"] != -100).any()


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(minilm_tokenizer):
    tok = minilm_tokenizer
    task = lm_task("encoder", tok, whole_word_masking=True)
    train = task.formatter("train")({"sentence": SENTENCES[:400]}, tok, 64)
    features = [dict(zip(train, values)) for values in zip(*train.values())]
    torch.manual_seed(0)
    batch = task.collator(tok, None)(features)
    split_words = 0
    for row, sentence in enumerate(SENTENCES[:400]):
        words = tok(sentence, truncation=True, max_length=64).word_ids()
        masked = (batch["labels"][row, : len(words)] != -100).tolist()
        for word in set(w for w in words if w is not None):
            pieces = [masked[i] for i, w in enumerate(words) if w == word]
            assert all(pieces) or not any(pieces), (sentence, word)
            split_words += len(pieces) > 1 and all(pieces)
    assert split_words > 10  # words of several pieces were masked whole


def test_causal_blocks_cover_each_document_and_packing_keeps_documents_apart(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    task = lm_task("decoder", tok)
    docs = [" ".join(SENTENCES[i : i + k]) for i, k in ((0, 1), (20, 1), (5, 12))]
    blocks = task.blocks(docs[2], tok, 32)
    ids = [i for b in blocks for i in b["input_ids"]]
    stop = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    assert ids == tok(docs[2], add_special_tokens=False)["input_ids"] + [stop]  # no bos in a WordPiece vocabulary
    assert all(len(b["input_ids"]) <= 32 for b in blocks) and len(blocks) > 3

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    rows = task.formatter("train")({"sentence": docs}, tok, 32)
    features = [dict(zip(rows, values)) for values in zip(*rows.values())]
    expected_sum = expected_count = 0.0
    for f in features:  # each block alone: the model's own mean loss over its predicted tokens
        out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["input_ids"]]))
        expected_sum += out.loss.item() * (len(f["input_ids"]) - 1)
        expected_count += len(f["input_ids"]) - 1
    packed = build_task(task.spec, None, "decoder", packing=32, tokenizer=tok)
    batch = packed.collator(tok, None)(features)
    assert len(batch["input_ids"]) < len(features)  # the short documents share a row
    with torch.no_grad():
        loss, _ = packed.forward(model, batch)
    assert loss.items["task"].item() == expected_count
    assert loss.sums["task"].item() == pytest.approx(expected_sum, rel=1e-5)


def test_span_corruption_round_trips_with_sentinels_and_infills_without():
    generator = torch.Generator().manual_seed(0)
    ids = list(range(1000, 1200))
    noisy = total = 0
    for _ in range(50):
        mask = noise_mask(len(ids), 0.15, 3.0, generator)
        noisy, total = noisy + sum(mask), total + len(mask)
        sentinels = list(range(100))
        inputs, targets = corrupt(ids, mask, sentinels, None)
        spans = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        assert abs(spans - 10) <= 1  # 30 noise tokens in spans of mean length 3
        restored, target = [], iter(targets)
        next(target)  # the first sentinel
        for token in inputs:  # each sentinel in the inputs stands for the tokens after it in the targets
            if token in sentinels:
                for t in target:
                    if t in sentinels:
                        break
                    restored.append(t)
            else:
                restored.append(token)
        assert restored == ids and not mask[0]
        infilled, whole = corrupt(ids, mask, [], 7)
        assert whole == ids and infilled.count(7) == spans and len(infilled) == len(ids) - sum(mask) + spans
    assert noisy / total == pytest.approx(0.15, abs=0.005)


def lm_recipe(tmp_path, model, extra: str = "", name: str = "lm.yaml") -> object:
    text = "\n".join(SENTENCES[:200])
    (tmp_path / "train.txt").write_text("sentence\n" + text + "\n", encoding="utf-8")
    (tmp_path / "dev.txt").write_text("sentence\n" + "\n".join(SENTENCES[1000:1040]) + "\n", encoding="utf-8")
    return recipe_file(
        tmp_path,
        f"""
model: {model}
task: {{type: language_modeling, text_a: sentence{extra}}}
data: {{files: {{train: {tmp_path / "train.txt"}, validation: {tmp_path / "dev.txt"}}}, format: tsv,
       reader: {{quoting: none}}, max_length: 32}}
train: {{epochs: 1, batch_size: 16, lr: 1.0e-3, eval_every: epoch}}
""",
        name,
    )


def test_masked_lm_run_is_a_checkpoint_a_classifier_fine_tunes_from(tmp_path, tiny_bert, sst2_rows):
    result = run_cli("train", lm_recipe(tmp_path, tiny_bert), f"output_dir={tmp_path / 'lm'}")
    assert result.exit_code == 0
    metrics = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-5)
    log = [json.loads(line) for line in (tmp_path / "lm" / "log.jsonl").read_text().splitlines()]
    assert any("eval_perplexity" in entry for entry in log)
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    classify = recipe_file(
        tmp_path,
        f"""
model: {tmp_path / "lm"}
task: {{type: classification, text_a: sentence, label: label}}
data: {{files: {{train: {sst2_rows}, validation: {sst2_rows}}}, reader: {{quoting: none}}}}
train: {{epochs: 1, batch_size: 8}}
""",
        "classify.yaml",
    )
    assert run_cli("train", classify, f"output_dir={tmp_path / 'cls'}").exit_code == 0
    assert json.loads((tmp_path / "cls" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]


def test_zero_shot_perplexity_is_the_models_own_loss(tmp_path, tiny_llama):
    recipe = lm_recipe(tmp_path, tiny_llama, ", objective: causal")
    result = run_cli("eval", "--zero-shot", recipe, "--output", tmp_path / "zero-shot")
    assert result.exit_code == 0
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    total = count = 0.0
    task = lm_task("decoder", tok)
    for sentence in SENTENCES[1000:1040]:
        for block in task.blocks(sentence, tok, 32):
            ids = torch.tensor([block["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert result.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_bart"])
def test_span_corruption_trains_an_encoder_decoder(model, tmp_path, request):
    folder = request.getfixturevalue(model)
    result = run_cli("train", lm_recipe(tmp_path, folder), f"output_dir={tmp_path / 'run'}", "train.lr=3e-3")
    assert result.exit_code == 0
    recipe = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "objective: span_corruption" in recipe
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert math.isfinite(result.metrics["perplexity"]) and losses[-1] < losses[0]


@pytest.mark.parametrize(
    ("extra", "overrides", "expected"),
    [
        ("", ["task.text_a=txt"], "task.text_a: no column 'txt' in split"),
        (", objective: causal", [], "task.objective: causal LM trains a decoder; "),
        (", whole_word_masking: true, objective: span_corruption", [], "task.whole_word_masking: only masked LM"),
        ("", ["task.label=label"], "task.label: unknown key for task type language_modeling (it learns from the text"),
        ("", ["task.metrics=[accuracy]"], "task.metrics: accuracy does not judge a language model"),
    ],
)
def test_language_modeling_mistakes_are_one_line(extra, overrides, expected, tmp_path, tiny_bert, capsys):
    result = run_cli("validate", lm_recipe(tmp_path, tiny_bert, extra), *[f"--set={o}" for o in overrides])
    err = capsys.readouterr().err
    assert result.exit_code == 2 and expected in err and "Traceback" not in err, err


def test_predict_on_a_language_model_is_refused_in_one_line(tmp_path, tiny_bert, capsys):
    assert run_cli("train", lm_recipe(tmp_path, tiny_bert), f"output_dir={tmp_path / 'lm'}").exit_code == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"sentence": "a fine film"}\n')
    result = run_cli("predict", str(tmp_path / "lm"), "--input", str(rows))
    assert result.exit_code == 2 and "a language_modeling run predicts no labels" in capsys.readouterr().err


def test_block_lengths_are_reported(minilm_tokenizer):
    task = lm_task("encoder", minilm_tokenizer)
    rows = task.formatter("train")({"sentence": [" ".join(SENTENCES[:40])]}, minilm_tokenizer, 32)
    assert all(n <= 32 for n in rows[TOTAL_LENGTH]) and len(rows["input_ids"]) > 5


def test_masked_lm_needs_a_mask_token(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.mask_token = None
    with pytest.raises(FinetuneError, match="masked LM needs a tokenizer with a mask token"):
        lm_task("encoder", tok)


@pytest.mark.parametrize(
    ("model", "shown"), [("tiny_bert", "[MASK]"), ("tiny_llama", "block of"), ("tiny_t5", "[MASK]")]
)
def test_inspect_shows_masks_and_blocks(model, shown, tmp_path, request, capsys):
    recipe = lm_recipe(tmp_path, request.getfixturevalue(model))
    assert run_cli("inspect", recipe, "-n", "3").exit_code == 0
    out = capsys.readouterr().out
    assert shown in out and out.count("example ") == 3, out
