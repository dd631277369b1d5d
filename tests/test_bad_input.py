"""Bad input: one clear line per problem on stderr naming what and where, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import GLUE, REPO, recipe_file, run_cli

SST2 = REPO / "recipes/glue/sst2-minilm.yaml"


def local_recipe(
    tmp_path: Path, train_text: str, dev_text: str | None = None, suffix: str = "tsv", extra: str = ""
) -> Path:
    train = tmp_path / f"train.{suffix}"
    dev = tmp_path / f"dev.{suffix}"
    train.write_bytes(train_text.encode("utf-8") if isinstance(train_text, str) else train_text)
    dev.write_text(dev_text if dev_text is not None else "sentence\tlabel\ngood\t1\nbad\t0\n", encoding="utf-8")
    return recipe_file(
        tmp_path,
        f"""
model: sentence-transformers/all-MiniLM-L6-v2
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive]}}
data: {{files: {{train: {train}, validation: {dev}}}}}
output_dir: {tmp_path / "run"}
{extra}""",
    )


def assert_clean_failure(result, capsys, tmp_path: Path, *expected: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2
    assert "Traceback" not in err
    for text in expected:
        assert any(text in line for line in lines), (text, err)
    assert not (tmp_path / "run").exists()


def test_malformed_yaml(tmp_path, capsys):
    path = recipe_file(tmp_path, "model: [a\n")
    assert_clean_failure(run_cli("train", path), capsys, tmp_path, "malformed YAML")


def test_unknown_key_and_wrong_type_together(tmp_path, capsys):
    result = run_cli("train", SST2, "train.learning_rte=1", "train.epochs=two", f"output_dir={tmp_path / 'run'}")
    assert_clean_failure(
        result,
        capsys,
        tmp_path,
        "train.learning_rte: unknown key; did you mean train.lr?",
        "train.epochs: Input should be a valid number",
    )


def test_missing_recipe_file(tmp_path, capsys):
    assert_clean_failure(run_cli("train", tmp_path / "nope.yaml"), capsys, tmp_path, "nope.yaml: recipe file not found")


def test_missing_data_file(tmp_path, capsys):
    path = local_recipe(tmp_path, "sentence\tlabel\nfine\t1\nawful\t0\n")
    (tmp_path / "train.tsv").unlink()
    assert_clean_failure(run_cli("train", path), capsys, tmp_path, "data.files.train: file not found")


def test_missing_column_lists_the_columns(tmp_path, capsys):
    path = local_recipe(tmp_path, "text\tlabel\nfine\t1\nawful\t0\n")
    assert_clean_failure(
        run_cli("train", path),
        capsys,
        tmp_path,
        "task.text_a: no column 'sentence' in split 'train' (columns: text, label",
    )


def test_label_outside_the_declared_set(tmp_path, capsys):
    path = local_recipe(tmp_path, "sentence\tlabel\nfine\tpositive\nawful\tneutral\n")
    assert_clean_failure(
        run_cli("train", path),
        capsys,
        tmp_path,
        "task.label: 'neutral' in row 1 of split 'train' is not one of the classes (negative, positive)",
    )


def test_empty_split(tmp_path, capsys):
    path = local_recipe(tmp_path, "sentence\tlabel\n")
    assert_clean_failure(run_cli("train", path), capsys, tmp_path, "data.train_split: split 'train' is empty")


def test_file_that_is_not_utf8(tmp_path, capsys):
    path = local_recipe(tmp_path, "sentence\tlabel\ncaf\xe9 cr\xe8me\t1\n".encode("latin-1"))
    assert_clean_failure(run_cli("train", path), capsys, tmp_path, "is not utf-8 text", "set data.reader.encoding")


def test_model_path_that_does_not_exist(tmp_path, capsys):
    result = run_cli("train", SST2, "model=./no/such/model", f"output_dir={tmp_path / 'run'}")
    assert_clean_failure(result, capsys, tmp_path, "model.name: no such folder: ./no/such/model")


def test_wrong_field_count_suggests_quoting(tmp_path, capsys):
    path = local_recipe(tmp_path, 'sentence\tlabel\n"a quote\t1\nopens\t0\n')
    assert_clean_failure(run_cli("train", path), capsys, tmp_path, "try data.reader.quoting: none")


def test_console_script_exit_code_and_single_line(tmp_path):
    env = {**os.environ, "FINETUNE_DATA_MIRROR": str(GLUE.parent)}
    done = subprocess.run(
        [str(REPO / ".venv/bin/finetune"), "validate", str(SST2), "--set", "task.text_a=sentnce"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{SST2}: task.text_a: no column 'sentnce' in split 'train' "
        "(columns: sentence, label; read from mirror of nyu-mll/glue)"
    ]


@pytest.mark.parametrize("path", [REPO / "recipes/glue/cola-minilm.yaml", REPO / "recipes/glue/rte-minilm.yaml"])
def test_validate_ok(path, capsys):
    assert run_cli("validate", path).exit_code == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_hub_dataset_without_a_mirror_offline_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FINETUNE_DATA_MIRROR")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    result = run_cli("train", SST2, f"output_dir={tmp_path / 'run'}")
    assert_clean_failure(result, capsys, tmp_path, "data.source: cannot load nyu-mll/glue (sst2)")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.reader.delimiter='\\t'"], "data.reader.delimiter: one character"),
        (["data.reader.encoding=utf9"], "data.reader.encoding: unknown encoding 'utf9'"),
        (["task.metrics=[pearson]"], "task.metrics: pearson does not judge classes (task type classification)"),
        (["data.max_length=100000"], "data.max_length: 100000 exceeds the model's 512 positions"),
    ],
)
def test_more_bad_settings_are_one_line(overrides, expected, tmp_path, capsys):
    result = run_cli("train", SST2, *overrides, f"output_dir={tmp_path / 'run'}")
    assert_clean_failure(result, capsys, tmp_path, expected)


def test_bad_choice_fields_are_one_line(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"q": "pick", "options": [{"text": "a", "key": "A"}, {"text": "b", "key": "B"}], "answer": "A"}\n')
    for fields, expected in [
        ("context: q, choice_label: name", "task.choice_label: candidates are records with keys text, key; no 'name'"),
        ("context_template: '{q', choice_label: key", "task.context_template:"),
    ]:
        recipe = recipe_file(
            tmp_path,
            f"""
model: sentence-transformers/all-MiniLM-L6-v2
task: {{type: multiple_choice, {fields}, choices: options, choice_text: text, label: answer}}
data: {{files: {{train: {rows}, validation: {rows}}}}}
output_dir: {tmp_path / "run"}
""",
        )
        assert_clean_failure(run_cli("train", recipe), capsys, tmp_path, expected)


def test_non_finite_regression_target(tmp_path, capsys):
    path = local_recipe(tmp_path, "sentence\tlabel\nfine\t1.5\nawful\tnan\n", extra="")
    text = (
        path.read_text()
        .replace("type: classification", "type: regression")
        .replace(", labels: [negative, positive]", "")
    )
    path.write_text(text)
    assert_clean_failure(
        run_cli("train", path), capsys, tmp_path, "task.label: 'nan' in row 1 of split 'train' is not a number"
    )


def _recipe_with(tmp_path: Path, data_file: Path, model: str = "sentence-transformers/all-MiniLM-L6-v2") -> Path:
    return recipe_file(
        tmp_path,
        f"""
model: {model}
task: {{type: classification, text_a: sentence, label: label}}
data: {{files: {{train: {data_file}, validation: {data_file}}}}}
output_dir: {tmp_path / "run"}
""",
    )


def _damaged_model(tmp_path: Path, tiny_bert: Path, damage: str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in tiny_bert.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        (folder / "config.json").write_text("[1, 2]")
    return folder


def _bad_case(tmp_path: Path, tiny_bert: Path, case: str) -> tuple[list, str]:
    """(train's arguments, the line expected) for one bad input, its files written into tmp_path."""
    rows = tmp_path / "rows.tsv"
    rows.write_text("sentence\tlabel\nfine\t1\nawful\t0\n", encoding="utf-8")
    recipe = _recipe_with(tmp_path, rows)
    if case == "duplicate key":
        return [recipe_file(tmp_path, f"model: a/b\nmodel: c/d\n{recipe.read_text()}", "dup.yaml")], (
            "line 2, column 1: malformed YAML: key 'model' appears twice in one mapping"
        )
    if case == "5,000-deep list":
        return [recipe_file(tmp_path, "a: " + "[" * 5000 + "]" * 5000, "deep.yaml")], "nested too deeply"
    if case in ("symlink loop", "symlink loop in extends"):
        loop = tmp_path / "loop.yaml"
        loop.symlink_to(loop)
        if case == "symlink loop":
            return [loop], "loop.yaml: a symbolic link that points back to itself"
        return [recipe_file(tmp_path, "extends: loop.yaml\n", "child.yaml")], "a symbolic link that points back"
    if case == "recipe is a folder":
        return [tmp_path], f"{tmp_path}: a folder, not a recipe file"
    if case == "name escaping runs/":
        return [recipe, "name=../../x"], "name: '../../x' is not a folder name"
    if case == "unknown user's home":
        return [recipe, "output_dir=~nosuchuser/x"], "there is no home folder ~nosuchuser on this machine"
    if case == "json list of numbers":
        (tmp_path / "nums.json").write_text("[1, 2, 3]")
        return [_recipe_with(tmp_path, tmp_path / "nums.json")], "item 0 of the list is not a JSON object"
    if case == "duplicated header column":
        rows.write_text("sentence\tsentence\tlabel\na\tb\t1\n", encoding="utf-8")
        return [recipe], "the header names column 'sentence' more than once"
    if case == "NUL byte":
        rows.write_text("sentence\tlabel\na\x00b\t1\nc\t0\n", encoding="utf-8")
        return [recipe], "line 2 holds a NUL byte"
    model = _damaged_model(tmp_path, tiny_bert, case)
    recipe = _recipe_with(tmp_path, rows, str(model))
    if case == "config list":
        return [recipe], "config.json holds a JSON list, not a model config"
    return [recipe], f"model.name: cannot load {model}: Error while deserializing header"


@pytest.mark.parametrize(
    "case",
    [
        "duplicate key",
        "5,000-deep list",
        "symlink loop",
        "symlink loop in extends",
        "recipe is a folder",
        "name escaping runs/",
        "unknown user's home",
        "json list of numbers",
        "duplicated header column",
        "NUL byte",
        "truncated",
        "empty",
        "config list",
    ],
)
def test_bad_input_that_used_to_end_in_a_traceback_or_be_accepted(case, tmp_path, tiny_bert, capsys):
    arguments, expected = _bad_case(tmp_path, tiny_bert, case)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert_clean_failure(run_cli("train", *arguments), capsys, tmp_path, expected)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_valid_input_that_used_to_be_refused(tmp_path, capsys):
    """A 2 MB text field (over the csv module's default field limit) and a delimiter given as an override."""
    rows = tmp_path / "rows.csv"
    rows.write_text("sentence,label\n" + "word " * 400_000 + ",1\nshort,0\n", encoding="utf-8")
    recipe = _recipe_with(tmp_path, rows)
    assert run_cli("validate", recipe, "--set", "data.reader.delimiter=,").exit_code == 0
    assert "ok" in capsys.readouterr().out
