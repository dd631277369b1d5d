"""Encoder-decoders with tokenizers of their real kinds, trained here on the shared data (conftest): T5's
SentencePiece unigram (</s> closes every sequence, <extra_id_N> sentinels) and BART's byte-level BPE (<s> ... </s>,
<mask>). Every task type that runs on encoder-decoders trains through each, on real rows."""

from __future__ import annotations

import json

import pytest
from conftest import GLUE, SHARED_DATA, recipe_file, run_cli, sample_file
from transformers import AutoTokenizer

from finetune.recipe import validate_dict
from finetune.tasks import build_task
from finetune.tasks.language_modeling import sentinel_ids

KINDS = ["t5_sentencepiece", "bart_bytelevel"]


def rows(path, task: dict, family: str = "encoder-decoder"):
    spec = validate_dict(
        {"model": "x/y", "task": task, "data": {"files": {"train": "t.jsonl", "validation": "v.jsonl"}}}
    ).task
    return spec.settled(family, None), path


def test_t5_sequences_end_with_eos_and_spans_become_sentinels(t5_sentencepiece):
    tok = AutoTokenizer.from_pretrained(t5_sentencepiece)
    spec, _ = rows(None, {"type": "seq2seq", "text_a": "src", "label": "tgt", "prefix": "fix:"})
    task = build_task(spec, None, "encoder-decoder", max_target_length=32, tokenizer=tok)
    features = task.format({"src": ["the film is fine"], "tgt": ["a fine film"]}, tok, 32)
    assert features["input_ids"][0][-1] == tok.eos_token_id and features["labels"][0][-1] == tok.eos_token_id
    assert tok.bos_token_id is None and tok.decode(features["labels"][0], skip_special_tokens=True) == "a fine film"

    spec, _ = rows(None, {"type": "language_modeling", "text_a": "text"})
    lm = build_task(spec, None, "encoder-decoder", tokenizer=tok)
    sentinels = sentinel_ids(tok)
    assert len(sentinels) == 100 and tok.convert_ids_to_tokens(sentinels[:2]) == ["<extra_id_0>", "<extra_id_1>"]
    text = " ".join(json.loads(line)["dialogue"] for line in _dialogues()[:3])
    blocks = lm.formatter("eval")({"text": [text]}, tok, 64)
    for inputs, targets in zip(blocks["input_ids"], blocks["labels"]):
        used = [t for t in inputs if t in sentinels]
        assert used == sentinels[: len(used)] and used  # numbered in order of appearance
        assert targets[0] == sentinels[0] and inputs[-1] == targets[-1] == tok.eos_token_id
        noise, kept = sum(t not in sentinels for t in targets[:-1]), len(inputs) - len(used) - 1
        assert noise == pytest.approx(0.15 * (noise + kept), abs=1)  # T5's noise density


def test_bart_sequences_open_with_bos_and_infilling_masks_spans(bart_bytelevel):
    tok = AutoTokenizer.from_pretrained(bart_bytelevel)
    spec, _ = rows(None, {"type": "seq2seq", "text_a": "src", "label": "tgt"})
    task = build_task(spec, None, "encoder-decoder", max_target_length=32, tokenizer=tok)
    labels = task.format({"src": ["the film is fine"], "tgt": ["a fine film"]}, tok, 32)["labels"][0]
    assert labels[0] == tok.bos_token_id and labels[-1] == tok.eos_token_id

    spec, _ = rows(None, {"type": "language_modeling", "text_a": "text"})
    lm = build_task(spec, None, "encoder-decoder", tokenizer=tok)
    assert sentinel_ids(tok) == []
    text = json.loads(_dialogues()[0])["dialogue"]
    block = lm.blocks(text, tok, 64)[0]["input_ids"]
    corrupted = lm.collator(tok, None).fixed({"input_ids": block})
    assert corrupted["labels"] == [tok.bos_token_id, *block, tok.eos_token_id]  # the whole block, BART's way
    assert tok.mask_token_id in corrupted["input_ids"] and corrupted["input_ids"][0] == tok.bos_token_id


def _dialogues() -> list[str]:
    return (SHARED_DATA / "seq2seq/dialogsum/dialogsum.dev.jsonl").read_text().splitlines()


def _folder(path):
    path.mkdir()
    return path


def _jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _data(tmp_path) -> dict[str, str]:
    """Small real files of each shape the task types read."""
    sst2 = [line.split("\t") for line in (GLUE / "sst2" / "train.tsv").read_text().splitlines()[1:41]]
    pairs = [{"a": a, "b": b, "score": float(x) + 0.5, "label": x} for (a, x), (b, _) in zip(sst2, sst2[1:])]
    dialogues = [json.loads(line) for line in _dialogues()[:24]]
    text = [{"src": d["dialogue"][:300], "tgt": d["summary"]} for d in dialogues]
    prompts = [{"prompt": d["dialogue"][:300], "completion": d["summary"]} for d in dialogues]
    return {
        "sst2": str(sample_file(_folder(tmp_path / "sst2"), GLUE / "sst2" / "train.tsv", 33)),
        "rte": str(sample_file(_folder(tmp_path / "rte"), GLUE / "rte" / "train.tsv", 33)),
        "pairs": _jsonl(tmp_path / "pairs.jsonl", pairs),
        "copa": str(sample_file(_folder(tmp_path / "copa"), SHARED_DATA / "choice/copa/train.jsonl", 32)),
        "text": _jsonl(tmp_path / "text.jsonl", text),
        "prompts": _jsonl(tmp_path / "prompts.jsonl", prompts),
    }


TASKS = {  # task type: (task section, data file key, evaluation metric)
    "classification": ("{type: classification, text_a: sentence, label: label}", "sst2", "accuracy"),
    "regression": ("{type: regression, text_a: a, text_b: b, label: score}", "pairs", "pearson"),
    "entailment": ("{type: entailment, text_a: sentence1, text_b: sentence2, label: label}", "rte", "accuracy"),
    "similarity": ("{type: similarity, text_a: a, text_b: b, label: label}", "pairs", "accuracy"),
    "multiple_choice": (
        "{type: multiple_choice, context: premise, choices: [choice1, choice2], label: label}",
        "copa",
        "accuracy",
    ),
    "seq2seq": ("{type: seq2seq, text_a: src, label: tgt}", "text", "rougeL"),
    "instruction": ("{type: instruction}", "prompts", "rougeL"),
    "language_modeling": ("{type: language_modeling, text_a: src}", "text", "perplexity"),
}


@pytest.mark.parametrize("task_type", list(TASKS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_encoder_decoder_task_type_trains_through_real_tokenizers(kind, task_type, tmp_path, request):
    task, key, metric = TASKS[task_type]
    files = _data(tmp_path)
    if task_type == "instruction":
        source = f"{{files: {{train: {files[key]}}}, format: prompt_completion}}"
        data = f"{{mixture: [{source}], eval_mixture: [{source}], max_length: 96}}"
    else:
        reader = ", reader: {quoting: none}" if files[key].endswith(".tsv") else ""
        data = f"{{files: {{train: {files[key]}, validation: {files[key]}}}, max_length: 64{reader}}}"
    recipe = recipe_file(
        tmp_path,
        f"""
model: {request.getfixturevalue(kind)}
task: {task}
data: {data}
train: {{max_steps: 2, batch_size: 4, eval_every: 2}}
""",
    )
    generation = ["generation.max_new_tokens=4", "data.max_target_length=16"] if task_type in ("seq2seq",) else []
    generation += ["generation.max_new_tokens=4"] if task_type == "instruction" else []
    result = run_cli("train", recipe, "data.max_eval_samples=8", *generation, f"output_dir={tmp_path / 'run'}")
    assert result.exit_code == 0 and metric in result.metrics
