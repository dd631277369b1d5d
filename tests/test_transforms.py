"""data.transforms and data.split on the shapes public datasets arrive in, each built here as a small file: the rows
after the transforms (as validation reads them, and as training loads them through `datasets`) equal rows written
out by hand, and what cannot apply fails in one line naming the transform, the column and the row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from cases import max_difference, train, weights, without_dropout
from conftest import REPO, SHARED_DATA, recipe_file, run_cli

from finetune import data
from finetune.errors import FinetuneError
from finetune.recipe import load_recipe
from finetune.recipe.loading import validate_dict
from finetune.sources import read_rows, resolve_source
from finetune.transforms import partition, transform_rows
from finetune.validate import check


def recipe_with(model: Path, files: Path | dict, transforms: list, task: dict | None = None, **data_keys):
    """A recipe reading `files` (one file: both splits) through `transforms`; multiple choice unless `task`."""
    if not isinstance(files, dict):
        files = {"train": str(files), "validation": str(files)}
    task = task or {"type": "multiple_choice", "context": "question", "choices": "options", "label": "answer"}
    return validate_dict(
        {"model": str(model), "task": task, "data": {"files": files, "transforms": transforms, **data_keys}}
    )


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_both_ways(recipe, split: str = "train") -> list[dict]:
    """The split's rows as training loads them (datasets), checked equal to validation's reading."""
    loaded = data.load_raw(recipe.data, {"train": split})["train"].to_list()
    source = resolve_source(recipe.data)
    read = transform_rows(recipe.data.transforms, split, list(read_rows(source, split, source.format_of(split))))
    assert loaded == read
    return loaded


def test_labels_in_a_side_file_mapped_to_ids(tmp_path, tiny_bert):
    """SuperGLUE-style: the labels in valid-labels.lst, 1 and 2, mapped to 0 and 1."""
    (tmp_path / "valid.tsv").write_text("premise\thypothesis\nA\tB\nC\tD\nE\tF\n")
    (tmp_path / "valid-labels.lst").write_text("2\n1\n2\n")
    recipe = recipe_with(
        tiny_bert,
        tmp_path / "valid.tsv",
        [
            {"join": {"column": "label", "files": {"train": str(tmp_path / "valid-labels.lst")}}},
            {"map": {"column": "label", "values": {"1": 0, "2": 1}}},
        ],
        task={"type": "entailment", "text_a": "premise", "text_b": "hypothesis", "label": "label"},
    )
    assert rows_both_ways(recipe) == [
        {"premise": "A", "hypothesis": "B", "label": 1},
        {"premise": "C", "hypothesis": "D", "label": 0},
        {"premise": "E", "hypothesis": "F", "label": 1},
    ]


def test_candidates_in_one_string_and_a_letter_answer(tmp_path, tiny_bert):
    """AQuA/MathQA-style: options "(A) 12 (B) 15 ...", the answer a letter naming no column."""
    rows = [
        {"question": "3 x 4?", "options": "(A) 12 (B) 15 (C) 7", "correct": "A"},
        {"question": "10 - 3?", "options": "(A) 13 (B) 30 (C) 7", "correct": "c"},
    ]
    path = jsonl(tmp_path / "train.jsonl", rows)
    recipe = recipe_with(
        tiny_bert,
        path,
        [
            {"split_text": {"column": "options", "pattern": r"\(([A-E])\)\s*", "names": "letters"}},
            {"answer": {"column": "correct", "style": "letter", "into": "answer"}},
            {"drop": ["correct"]},
        ],
    )
    assert rows_both_ways(recipe) == [
        {"question": "3 x 4?", "options": ["12", "15", "7"], "letters": ["A", "B", "C"], "answer": 0},
        {"question": "10 - 3?", "options": ["13", "30", "7"], "letters": ["A", "B", "C"], "answer": 2},
    ]


def test_articles_with_lists_of_questions_become_one_row_each(tmp_path, tiny_bert):
    """RACE-style: one record per article (a file each) with lists of questions, options and letter answers;
    a 1-based answer column (a CSV) on another split."""
    for n, (article, count) in enumerate([("The cat sat.", 2), ("Rain fell.", 1)]):
        record = {
            "article": article,
            "questions": [f"q{n}{i}" for i in range(count)],
            "options": [[f"o{n}{i}{j}" for j in range(4)] for i in range(count)],
            "answers": ["BD"[i % 2] for i in range(count)],
        }
        (tmp_path / f"article{n}.json").write_text(json.dumps(record))
    recipe = recipe_with(
        tiny_bert,
        {"train": str(tmp_path / "article*.json"), "validation": str(tmp_path / "article0.json")},
        [
            {"explode": ["questions", "options", "answers"]},
            {"answer": {"column": "answers", "style": "letter"}},
            {"rename": {"questions": "question", "answers": "answer"}},
        ],
    )
    assert rows_both_ways(recipe) == [
        {"article": "The cat sat.", "question": "q00", "options": ["o000", "o001", "o002", "o003"], "answer": 1},
        {"article": "The cat sat.", "question": "q01", "options": ["o010", "o011", "o012", "o013"], "answer": 3},
        {"article": "Rain fell.", "question": "q10", "options": ["o100", "o101", "o102", "o103"], "answer": 1},
    ]


def test_answer_by_one_based_index_or_by_name(tmp_path, tiny_bert):
    """A 1-based answer column, and ARC's answerKey naming an entry of choices.label (letters or digits)."""
    (tmp_path / "q.csv").write_text("question,a,b,c,answer\nx?,1,2,3,3\ny?,4,5,6,1\n")
    recipe = recipe_with(
        tiny_bert,
        tmp_path / "q.csv",
        [{"answer": {"column": "answer", "style": "one_based"}}],
        task={"type": "multiple_choice", "context": "question", "choices": ["a", "b", "c"], "label": "answer"},
    )
    assert [r["answer"] for r in rows_both_ways(recipe)] == [2, 0]
    arc = [
        {"question": "x", "choices": {"text": ["p", "q"], "label": ["A", "B"]}, "answerKey": "B"},
        {"question": "y", "choices": {"text": ["p", "q", "r"], "label": ["1", "2", "3"]}, "answerKey": "3"},
    ]
    recipe = recipe_with(
        tiny_bert,
        jsonl(tmp_path / "arc.jsonl", arc),
        [{"answer": {"column": "answerKey", "names": "choices.label"}}],
        task={"type": "multiple_choice", "context": "question", "choices": "choices.text", "label": "answerKey"},
    )
    assert [r["answerKey"] for r in rows_both_ways(recipe)] == [1, 2]


def test_filter_cast_select(tmp_path, tiny_bert):
    """Natural Instructions-style numeric outputs ([18]) cast to text; unlabelled rows (-1) filtered out."""
    rows = [
        {"input": "a", "output": [18], "label": 1, "extra": 0},
        {"input": "b", "output": [2.5, 3], "label": -1, "extra": 0},
        {"input": "c", "output": ["x"], "label": 0, "extra": 0},
    ]
    path = jsonl(tmp_path / "t.jsonl", rows)
    recipe = recipe_with(
        tiny_bert,
        path,
        [
            {"filter": {"column": "label", "op": ">=", "value": 0}},
            {"cast": {"columns": ["output"], "to": "text"}},
            {"select": ["output", "input", "label"]},
        ],
        task={"type": "classification", "text_a": "input", "label": "label"},
    )
    assert rows_both_ways(recipe) == [
        {"output": ["18"], "input": "a", "label": 1},
        {"output": ["x"], "input": "c", "label": 0},
    ]


def test_a_join_after_a_filter_and_across_batches_keeps_its_lines(tmp_path, tiny_bert):
    """Line N of a side file joins the rows that came from row N, after a filter and an explode, across datasets'
    batches of 1,000 rows."""
    count = 2500
    rows = [{"text": f"t{i}", "parts": [i] * (i % 3)} for i in range(count)]
    path = jsonl(tmp_path / "big.jsonl", rows)
    (tmp_path / "gold.lst").write_text("".join(f"g{i}\n" for i in range(count)))
    recipe = recipe_with(
        tiny_bert,
        path,
        [
            {"filter": {"column": "parts", "op": "not empty"}},
            {"explode": ["parts"]},
            {"join": {"column": "gold", "files": {"train": str(tmp_path / "gold.lst")}}},
        ],
        task={"type": "classification", "text_a": "text", "label": "gold"},
    )
    found = rows_both_ways(recipe)
    expected = [{"text": f"t{i}", "parts": i, "gold": f"g{i}"} for i in range(count) for _ in range(i % 3)]
    assert found == expected


def test_side_file_changes_are_not_served_from_the_cache(tmp_path, tiny_bert):
    (tmp_path / "t.tsv").write_text("text\nA\nB\n")
    side = tmp_path / "labels.lst"
    side.write_text("x\ny\n")
    recipe = recipe_with(
        tiny_bert,
        tmp_path / "t.tsv",
        [{"join": {"column": "label", "files": {"train": str(side)}}}],
        task={"type": "classification", "text_a": "text", "label": "label"},
    )
    assert [r["label"] for r in data.load_raw(recipe.data, {"train": "train"})["train"]] == ["x", "y"]
    side.write_text("yy\nxx\n")
    assert [r["label"] for r in data.load_raw(recipe.data, {"train": "train"})["train"]] == ["yy", "xx"]


def test_split_draws_disjoint_seeded_parts(tmp_path, tiny_bert):
    rows = "".join(f"s{i}\t{i % 2}\n" for i in range(50))
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    recipe = validate_dict(
        {
            "model": str(tiny_bert),
            "task": {"type": "classification", "text_a": "sentence", "label": "label"},
            "data": {
                "files": {"validation": str(tmp_path / "dev.tsv")},
                "split": {"from": "validation", "eval_share": 0.2},
            },
        }
    )
    parts = data.load_raw(recipe.data, {"train": "train", "eval": "validation"})
    train, held = [r["sentence"] for r in parts["train"]], [r["sentence"] for r in parts["eval"]]
    assert len(held) == 10 and len(train) == 40
    assert sorted(train + held, key=lambda s: int(s[1:])) == [f"s{i}" for i in range(50)]
    assert partition(50, recipe.data.split) == partition(50, recipe.data.split)  # seeded
    other = recipe.data.split.model_copy(update={"seed": 1})
    assert partition(50, other)["eval"] != partition(50, recipe.data.split)["eval"]
    report = check(recipe)
    assert report.labels == ["0", "1"]
    assert "from: validation" in recipe_dump(recipe)  # written back under the key the user wrote


def recipe_dump(recipe) -> str:
    from finetune.recipe import dump_recipe

    return dump_recipe(recipe)


@pytest.mark.parametrize(
    ("transforms", "expected"),
    [
        ([{"rename": {"qustion": "q"}}], "data.transforms.0 (rename): no column 'qustion' (columns: question, "),
        ([{"answer": {"column": "answer", "style": "letter"}}], "(answer): answer '9' is not a letter A-Z in row 1"),
        ([{"map": {"column": "answer", "values": {"A": 1}}}], "(map): answer '9' is not in the table"),
        ([{"explode": ["question"]}], "data.transforms.0 (explode): question is not a list in row 0 of split"),
        ([{"filter": {"column": "question", "op": "<", "value": 3}}], "(filter): question 'x?' is not a number"),
        ([{"filter": {"column": "answer", "op": "==", "value": 7}}], "data.transforms: no row of split 'train'"),
        ([{"join": {"column": "z", "files": {"train": "missing.lst"}}}], "(join): file not found: missing.lst"),
        ([{"join": {"column": "z", "files": {"validation": "x"}}}], "(join): no file for split 'train' in files"),
        ([{"split_text": {"column": "question", "pattern": r"\((\w)\)"}}], "text before the first separator"),
        ([{"cast": {"columns": ["answer"], "to": "int"}}], "(cast): answer 'A' is not a number in row 0"),
        ([{"rename": {"answer": "question"}}], "(rename): column 'question' exists already"),
    ],
)
def test_a_transform_that_cannot_apply_fails_in_one_line(tmp_path, tiny_bert, capsys, transforms, expected):
    (tmp_path / "q.csv").write_text("question,answer\nx?,A\ny (a) z,9\n")
    text = json.dumps(
        {
            "model": str(tiny_bert),
            "task": {"type": "classification", "text_a": "question", "label": "answer"},
            "data": {"files": {"train": str(tmp_path / "q.csv"), "validation": str(tmp_path / "q.csv")}},
        }
    )
    recipe = recipe_file(tmp_path, text)
    result = run_cli("validate", str(recipe), "--set", f"data.transforms={json.dumps(transforms)}")
    err = capsys.readouterr().err
    assert result.exit_code == 2 and "Traceback" not in err
    assert expected in err, err
    with pytest.raises(FinetuneError, match="data.transforms"):  # training loads through datasets: the same error
        data.load_raw(load_recipe(recipe, [f"data.transforms={json.dumps(transforms)}"]).data, {"train": "train"})


def test_inspect_shows_rows_after_the_transforms(tmp_path, tiny_bert, capsys):
    (tmp_path / "q.tsv").write_text("sentence\tgrade\nfine\t1\nawful\t2\n")
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: classification, text_a: sentence, label: label}}
data:
  files: {{train: {tmp_path / "q.tsv"}, validation: {tmp_path / "q.tsv"}}}
  transforms:
    - map: {{column: grade, values: {{1: good, 2: bad}}, into: label}}
""",
    )
    assert run_cli("inspect", str(recipe), "-n", "2").exit_code == 0
    out = capsys.readouterr().out
    assert "label good" in out and "label bad" in out, out


def test_copa_as_a_csv_with_one_based_answers_trains_as_the_shipped_recipe(tmp_path, tiny_bert):
    """COPA rewritten as a CSV whose answer column counts from 1, read back with one transform: the run learns
    exactly what the shipped recipe learns from SuperGLUE's own rows (the same weights, tensor by tensor)."""
    model = without_dropout(tiny_bert, tmp_path)
    folder = tmp_path / "csv"
    folder.mkdir()
    for split, name in (("train", "train"), ("validation", "val")):
        rows = [json.loads(line) for line in (SHARED_DATA / "choice/copa" / f"{name}.jsonl").read_text().splitlines()]
        with (folder / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["premise", "question", "choice1", "choice2", "answer"])
            writer.writerows([r["premise"], r["question"], r["choice1"], r["choice2"], r["label"] + 1] for r in rows)
    shipped = yaml.safe_load((REPO / "recipes/choice/copa-minilm.yaml").read_text())
    settings = {"epochs": 1, "batch_size": 8, "max_grad_norm": 0, "eval_every": 1000, "group_by_length": False}
    shipped |= {"model": str(model), "train": shipped["train"] | settings}
    shipped["data"] |= {"max_train_samples": 24, "max_eval_samples": 8}
    from_csv = json.loads(json.dumps(shipped))
    from_csv["task"]["label"] = "answer"
    from_csv["data"] = {k: v for k, v in from_csv["data"].items() if k not in ("source", "subset")} | {
        "files": {"train": str(folder / "train.csv"), "validation": str(folder / "validation.csv")},
        "transforms": [{"answer": {"column": "answer", "style": "one_based"}}],
    }
    runs = [train(recipe | {"output_dir": str(tmp_path / f"run{n}")}) for n, recipe in enumerate((shipped, from_csv))]
    assert check(validate_dict(from_csv)).labels is None  # candidates, not classes: nothing flagged as 1..K
    assert max_difference(weights(runs[0].run_dir), weights(runs[1].run_dir))[0] == 0
    assert [r.metrics[k] for r in runs for k in ("accuracy", "eval_loss")] == [
        runs[0].metrics[k] for k in ("accuracy", "eval_loss")
    ] * 2


def test_predict_reads_input_in_the_training_data_shape(tmp_path, tiny_bert, capsys):
    """`finetune predict` on AQuA-shaped rows without their answers: the options string is split as in training,
    the answer steps are left out, and the model sees what it sees when the answers are there."""
    rows = [
        {"question": "3 x 4?", "options": "(A) 12 (B) 15 (C) 7", "correct": "A"},
        {"question": "10 - 3?", "options": "(A) 13 (B) 30 (C) 7", "correct": "C"},
    ]
    path = jsonl(tmp_path / "train.jsonl", rows)
    transforms = [
        {"split_text": {"column": "options", "pattern": r"\(([A-E])\)\s*", "names": "letters"}},
        {"answer": {"column": "correct", "style": "letter", "into": "answer"}},
        {"drop": ["correct"]},
    ]
    recipe = recipe_file(
        tmp_path,
        yaml.safe_dump(
            {
                "model": str(tiny_bert),
                "task": {"type": "multiple_choice", "context": "question", "choices": "options", "label": "answer"},
                "data": {"files": {"train": str(path), "validation": str(path)}, "transforms": transforms},
                "train": {"epochs": 1, "batch_size": 2, "save_every": 1000},
            }
        ),
    )
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 0
    unanswered = jsonl(tmp_path / "unanswered.jsonl", [{k: r[k] for k in ("question", "options")} for r in rows])

    def predict(rows: Path) -> list[dict]:
        assert run_cli("predict", tmp_path / "run", "--input", rows, "--output", tmp_path / "out.jsonl").exit_code == 0
        return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    predicted, answered = predict(unanswered), predict(path)
    assert [{k: r[k] for k in ("question", "options", "letters")} for r in predicted] == [
        {"question": "3 x 4?", "options": ["12", "15", "7"], "letters": ["A", "B", "C"]},
        {"question": "10 - 3?", "options": ["13", "30", "7"], "letters": ["A", "B", "C"]},
    ]
    assert [r["probabilities"] for r in predicted] == [r["probabilities"] for r in answered]
    capsys.readouterr()
    no_question = jsonl(tmp_path / "no-question.jsonl", [{"options": r["options"]} for r in rows])
    assert run_cli("predict", tmp_path / "run", "--input", no_question).exit_code == 2
    assert f"--input: {no_question} lacks column(s) question after data.transforms" in capsys.readouterr().err
