"""Which part of a too-long input is cut (task.truncate, task.truncate_field): the tokens kept are the ones asked
for, the input fits data.max_length, the untruncated count is the whole input's, and inspect marks the cut."""

from __future__ import annotations

import json

import pytest
from conftest import recipe_file, run_cli
from transformers import AutoTokenizer

from finetune.columns import TOTAL_LENGTH
from finetune.recipe import validate_dict
from finetune.tasks import build_task

ARTICLE = " ".join(f"word{i}" for i in range(60))  # far longer than the limit below
QUESTION = "which colour was the cat"
LIMIT = 32


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


def choice_task(**keys):
    spec = {"type": "multiple_choice", "context_template": "{article} {question}", "choices": ["a", "b"], **keys}
    return build_task(validate_dict({"model": "x/y", "task": spec, "data": {"source": "x/y"}}).task)


def words(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_the_question_survives_when_the_article_is_cut_first(tokenizer):
    row = {"article": ARTICLE, "question": QUESTION, "a": "black", "b": "a very pale ginger", "label": 0}
    batch = {key: [value] for key, value in row.items()}
    whole = len(tokenizer(f"{ARTICLE} {QUESTION}", "a very pale ginger")["input_ids"])  # the longer candidate
    default = choice_task().format(batch, tokenizer, LIMIT)
    assert QUESTION not in words(tokenizer, default["input_ids"][0][0])  # the tokenizer cuts the end: the question
    for side, kept in (("end", "word0 word1"), ("start", "word58 word59"), ("middle", "word0 word1")):
        cut = choice_task(truncate_field="article", truncate=side).format(batch, tokenizer, LIMIT)
        for ids in cut["input_ids"][0]:
            text = words(tokenizer, ids)
            assert len(ids) <= LIMIT and QUESTION in text and kept in text, (side, text)
        assert cut[TOTAL_LENGTH][0][1] == whole  # counted as the whole input, so that it reports truncated
    middle = words(
        tokenizer,
        choice_task(truncate_field="article", truncate="middle").format(batch, tokenizer, LIMIT)["input_ids"][0][1],
    )
    assert "word0" in middle and "word59" in middle and "word30" not in middle


@pytest.mark.parametrize(("side", "first", "last"), [("start", False, True), ("middle", True, True)])
def test_a_long_text_keeps_its_end_or_both_ends(tokenizer, side, first, last):
    spec = {"type": "classification", "text_a": "text", "label": "label", "truncate": side}
    task = build_task(validate_dict({"model": "x/y", "task": spec, "data": {"source": "x/y"}}).task, ["a", "b"])
    encoded = task.format({"text": [ARTICLE], "label": ["a"]}, tokenizer, LIMIT)
    text = words(tokenizer, encoded["input_ids"][0])
    assert len(encoded["input_ids"][0]) == LIMIT
    assert ("word0" in text) == first and ("word59" in text) == last
    assert encoded[TOTAL_LENGTH][0] == len(tokenizer(ARTICLE)["input_ids"])


def test_truncate_field_names_a_template_field():
    with pytest.raises(Exception, match="task.truncate_field: 'story' is not a field of task.context_template"):
        choice_task(truncate_field="story")


def test_inspect_marks_truncated_examples(tmp_path, tiny_bert, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"text": ARTICLE, "label": "a"}) + "\n" + json.dumps({"text": "short", "label": "b"}) + "\n"
    )
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: classification, text_a: text, label: label}}
data: {{files: {{train: {rows}, validation: {rows}}}, max_length: {LIMIT}}}
""",
    )
    assert run_cli("inspect", recipe, "-n", "2").exit_code == 0
    shown = capsys.readouterr().out
    whole = len(AutoTokenizer.from_pretrained(tiny_bert)(ARTICLE)["input_ids"])
    assert f"{LIMIT} tokens, label a (id 0) (TRUNCATED from {whole} tokens)" in shown
    assert shown.count("TRUNCATED") == 1


def test_validate_counts_the_examples_max_length_cuts(tmp_path, tiny_bert, sst2_rows, tokenizer, capsys):
    """`finetune validate --tokens`: the truncated examples of each split, as many as the sentences whose tokens
    (special ones included) pass data.max_length, counted here with the tokenizer alone."""
    limit = 12
    sentences = [line.rsplit("\t", 1)[0] for line in sst2_rows.read_text().splitlines()[1:]]
    lengths = [len(tokenizer(s)["input_ids"]) for s in sentences]
    expected = sum(n > limit for n in lengths)
    assert 0 < expected < len(sentences)
    recipe = recipe_file(
        tmp_path,
        f"model: {tiny_bert}\ntask: {{type: classification, text_a: sentence, label: label}}\n"
        f"data: {{files: {{train: {sst2_rows}, dev: {sst2_rows}}}, eval_split: dev, max_length: {limit}, "
        "reader: {quoting: none}}\n",
    )
    assert run_cli("validate", recipe, "--tokens").exit_code == 0
    out, dropped = capsys.readouterr().out, sum(n - limit for n in lengths if n > limit)
    for split in ("train", "eval"):
        counts = f"{expected} of {len(sentences)} {split} examples truncated"
        assert f"{recipe}: note: data.max_length: {counts} ({dropped} of {sum(lengths)} tokens dropped)" in out


def test_the_text_to_text_head_cuts_the_part_asked_for(tokenizer):
    """T5's head writes the fields into one source (`text: ...`): the first text (or task.truncate_field) is cut,
    not the source's end, and the untruncated count is the whole source's."""
    spec = {"type": "classification", "text_a": "text", "text_b": "question", "label": "label", "head": "text_to_text"}
    batch = {"text": [ARTICLE], "question": [QUESTION], "label": ["a"]}
    whole = len(tokenizer(f"text: {ARTICLE} question: {QUESTION}")["input_ids"])
    for side, first, last in (("end", True, False), ("start", False, True), ("middle", True, True)):
        task = build_task(
            validate_dict({"model": "x/y", "task": {**spec, "truncate": side}, "data": {"source": "x/y"}}).task,
            ["a", "b"],
        )
        encoded = task.format(batch, tokenizer, LIMIT)
        ids = encoded["input_ids"][0][0]
        text = words(tokenizer, ids)
        assert len(ids) <= LIMIT and encoded[TOTAL_LENGTH][0][0] == whole, side
        assert (QUESTION in text) == (side != "end") and ("word0 " in text) == first and ("word59" in text) == last
    spec = {"type": "multiple_choice", "context_template": "{article} {question}", "choices": ["a", "b"]}
    row = {"article": [ARTICLE], "question": [QUESTION], "a": ["black"], "b": ["ginger"], "label": [0]}
    for side, kept in (("end", "word0 word1"), ("start", "word58 word59")):
        keys = {"head": "text_to_text", "truncate_field": "article", "truncate": side}
        task = build_task(validate_dict({"model": "x/y", "task": {**spec, **keys}, "data": {"source": "x/y"}}).task)
        ids = task.format(row, tokenizer, LIMIT)["input_ids"][0][0]
        assert len(ids) <= LIMIT and QUESTION in words(tokenizer, ids) and kept in words(tokenizer, ids), side
