"""Property-based tests of the recipe loader and of overrides: whatever the text, a recipe file loads into a valid
recipe or fails with FinetuneError (one line per problem), never another exception, and never by hanging."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune.errors import FinetuneError
from finetune.recipe import load_recipe

BASE = REPO / "recipes/glue/sst2-minilm.yaml"
KEYS = ["model", "task", "data", "train", "peft", "hub", "name", "type", "lr", "epochs", "files", "labels", "extends"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(KEYS))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner),
    max_leaves=20,
)
# what an override looks like, and what a hostile one does: dots, brackets, YAML flow syntax, tags, anchors
OVERRIDE_TEXT = st.text(alphabet=st.sampled_from(list("atrin.=_-[]{}:,!&*'\" 0129eE")), max_size=24)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def loads_or_fails_cleanly(path: Path, overrides: list[str] = ()) -> None:
    try:
        load_recipe(path, overrides)
    except FinetuneError as exc:
        assert exc.problems and all(problem and "\n" not in problem for problem in exc.problems)


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_text_as_a_recipe(text, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    loads_or_fails_cleanly(path)


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_any_yaml_mapping_as_a_recipe(document, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    loads_or_fails_cleanly(path)


@SETTINGS
@given(overrides=st.lists(OVERRIDE_TEXT, min_size=1, max_size=3))
def test_any_override_on_a_valid_recipe(overrides):
    loads_or_fails_cleanly(BASE, overrides)


@SETTINGS
@given(
    key=st.sampled_from(["train.lr", "train.epochs", "task.labels", "data.max_length", "model", "train", "x.y"]),
    value=VALUES,
)
def test_any_value_for_a_known_key(key, value):
    loads_or_fails_cleanly(BASE, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
