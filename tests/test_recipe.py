"""Recipe schema and loading: strict keys with suggestions, cross-field rules, extends, overrides, reference docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, recipe_file

from finetune.errors import FinetuneError
from finetune.recipe import load_recipe
from finetune.recipe.reference import schema_markdown
from finetune.validate import check

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def problems(path: Path, *overrides: str) -> list[str]:
    try:
        return check(load_recipe(path, list(overrides))).problems
    except FinetuneError as exc:
        return exc.problems


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_recipe_validates(path):
    found = problems(path)
    name = load_recipe(path).model.name
    if name.startswith("./runs/") and not (REPO / name).is_dir():  # starts from another recipe's run, not made here
        assert found and all("no such folder: ./runs/" in problem for problem in found), found
        return
    assert found == []


def test_unknown_key_suggests_the_nearest(tmp_path):
    sst2 = REPO / "recipes/glue/sst2-minilm.yaml"
    assert problems(sst2, "train.learning_rte=3e-5") == ["train.learning_rte: unknown key; did you mean train.lr?"]
    assert problems(sst2, "data.max_lenght=64") == ["data.max_lenght: unknown key; did you mean data.max_length?"]
    assert problems(sst2, "tsk.type=classification") == ["tsk: unknown key; did you mean task?"]


def test_every_problem_is_reported_at_once():
    found = problems(REPO / "recipes/glue/sst2-minilm.yaml", "train.epochs=many", "train.batch_size=-1", "data.bogus=1")
    assert [p.split(":")[0] for p in found] == ["data.bogus", "train.epochs", "train.batch_size"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["task.type=regression", "task.metrics=null"],
            "task.labels: unknown key for task type regression; read by classification, entailment, similarity",
        ),
        (["task.type=entailment"], "task.text_b: required key is missing"),
        (["task.target=score"], "task.target: unknown key for task type classification; read by similarity"),
        (["task.context=q"], "task.context: unknown key for task type classification; read by multiple_choice"),
        (["task.contxt=q"], "task.contxt: unknown key; did you mean task.context"),
        (["task.text_b=sentence"], "task.text_b: names the same column as task.text_a"),
        (["data.eval_split=train"], "data.eval_split: evaluating on the training split"),
        (["data.files={train: a.csv}"], "data: give exactly one of data.source"),
        (["task.labels=[only]"], "task.labels: a classification task needs at least two classes"),
        (
            ["train.early_stopping={patience: 2}", "train.select_best=false"],
            "train.early_stopping: needs train.select_best",
        ),
    ],
)
def test_cross_field_rules(overrides, expected):
    found = problems(REPO / "recipes/glue/sst2-minilm.yaml", *overrides)
    assert len(found) == 1 and found[0].startswith(expected)


def test_extends_merges_sections_and_overrides_are_typed(tmp_path):
    recipe_file(
        tmp_path,
        "model: ./base-model\ntask: {type: classification, text_a: s}\n"
        "data: {files: {train: t.csv, validation: v.csv}}\ntrain: {lr: 1.0e-4, epochs: 2}\n",
        "base.yaml",
    )
    child = recipe_file(tmp_path, "extends: base.yaml\ntrain: {epochs: 5}\n", "child.yaml")
    recipe = load_recipe(child, ["train.batch_size=8", "model.revision=main", "task.labels=[a, b]"])
    assert (recipe.train.lr, recipe.train.epochs, recipe.train.batch_size) == (1e-4, 5, 8)
    assert recipe.model.name == "./base-model" and recipe.model.revision == "main"
    assert recipe.task.labels == ["a", "b"] and recipe.name == "child"


def test_malformed_yaml_names_the_line(tmp_path):
    path = recipe_file(tmp_path, "model: x\ntask: [unclosed\n")
    with pytest.raises(FinetuneError, match=r"recipe.yaml: line 3, column 1: malformed YAML"):
        load_recipe(path)


def test_yaml_is_read_safely(tmp_path):
    path = recipe_file(tmp_path, "model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(FinetuneError, match="malformed YAML"):
        load_recipe(path)


def test_reference_docs_are_current():
    assert (REPO / "docs" / "recipe.md").read_text(encoding="utf-8") == schema_markdown(), "run `make docs`"


def test_validate_does_not_import_torch():
    code = (
        "import sys; from finetune.cli import run; "
        f"code = run(['validate', {str(REPO / 'recipes/glue/mrpc-minilm.yaml')!r}]).exit_code; "
        "assert code == 0, code; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
