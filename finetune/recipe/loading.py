"""Read a recipe: YAML (safe loader), `extends:` inheritance, `key.path=value` overrides, strict validation."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from finetune.errors import FinetuneError
from finetune.recipe.data_section import EVALUATE_ONLY
from finetune.recipe.schema import KEY_ALIASES, Recipe
from finetune.recipe.transforms import TRANSFORM_ERROR, TRANSFORMS
from finetune.specs import SPEC_BY_TYPE
from finetune.specs.distillation import DistillationSpec


def load_recipe(path: str | Path, overrides: list[str] = (), evaluate_only: bool = False) -> Recipe:
    """Load, merge, override and validate a recipe file; raise FinetuneError listing every problem. With
    `evaluate_only` (zero-shot scoring), the recipe needs no training split."""
    path = Path(path)
    raw = _read_with_extends(path, seen=())
    for override in overrides:
        _apply_override(raw, override)
    raw.setdefault("name", path.stem)
    _check_strings(raw)
    return validate_dict(raw, evaluate_only)


# pydantic's names for a union's members: literal['epoch'], constrained-int, function-after[...], int, str, ...
BRANCH = re.compile(r"\w+(-\w+)*\[.*\]|constrained-\w+|int|float|str|bool|none")
MAX_VALUES = 100_000  # far above any recipe; an alias bomb ("billion laughs") expands past it in a few lines


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` holds once its aliases are expanded, counted without expanding them."""
    if id(node) not in sizes:
        sizes[id(node)] = 1  # a recursive alias counts once
        if isinstance(node, yaml.SequenceNode):
            sizes[id(node)] += sum(_expanded_size(item, sizes) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[id(node)] += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    return sizes[id(node)]


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader (no object tags), refusing a key given twice in one mapping (YAML keeps the last) and
    aliases that expand into more than MAX_VALUES values."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_size(node, {}) > MAX_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to more than {MAX_VALUES:,} values", node.start_mark
            )
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_strings(raw: Any, key: str = "") -> None:
    """A `~user/...` path whose user this machine does not know is named in one line (not a folder named ~user);
    so is a NUL character, which no path and no text in a recipe holds."""
    if isinstance(raw, dict):
        for name, value in raw.items():
            _check_strings(value, f"{key}.{name}" if key else str(name))
    elif isinstance(raw, list):
        for index, value in enumerate(raw):
            _check_strings(value, f"{key}.{index}")
    elif isinstance(raw, str) and "\0" in raw:
        raise FinetuneError(f"{key}: {raw!r} holds a NUL character")
    elif isinstance(raw, str) and raw.startswith("~") and os.path.expanduser(raw) == raw:
        raise FinetuneError(f"{key}: {raw}: there is no home folder {raw.split('/')[0]} on this machine")


def validate_dict(raw: dict[str, Any], evaluate_only: bool = False) -> Recipe:
    """Validate an already merged recipe mapping."""
    try:
        return Recipe.model_validate(raw, context={EVALUATE_ONLY: evaluate_only})
    except ValidationError as exc:
        raise FinetuneError(*dict.fromkeys(_describe(err) for err in _merge_unions(exc.errors()))) from None


def _merge_unions(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One error per value of a union type (`eval_every: int | "epoch"`), its members' messages joined by "or";
    pydantic reports one per member, each under a branch name (`constrained-int`, `literal['epoch']`)."""
    merged: dict[tuple, dict[str, Any]] = {}
    for err in errors:
        keys = err["type"] == "extra_forbidden"  # the user's keys, whatever their spelling
        loc = tuple(p for p in err["loc"] if keys or not (isinstance(p, str) and BRANCH.fullmatch(p)))
        if loc == tuple(err["loc"]) or loc not in merged:
            merged[loc if loc != tuple(err["loc"]) else (id(err),)] = {**err, "loc": loc}
            continue
        first = merged[loc]
        other = err["msg"].removeprefix("Input should be ").split(", unable to parse")[0]
        first["msg"] = f"{first['msg'].split(', unable to parse')[0]} or {other}"
    return list(merged.values())


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default written out."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    name = str(path) if str(path).isprintable() else repr(str(path))  # a name with a newline stays one line
    if path.is_dir():
        raise FinetuneError(f"{name}: a folder, not a recipe file")
    if not path.is_file():
        raise FinetuneError(f"{name}: recipe file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except UnicodeDecodeError:
        raise FinetuneError(f"{name}: not a UTF-8 text file") from None
    except RecursionError:
        raise FinetuneError(f"{name}: nested too deeply to be a recipe") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FinetuneError(f"{name}:{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FinetuneError(f"{name}: a recipe is a mapping of keys to values, got {type(data).__name__}")
    return data


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if "\0" in str(path):
        raise FinetuneError(f"extends: {str(path)!r} holds a NUL character, which no file name can")
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop
        raise FinetuneError(f"{path}: a symbolic link that points back to itself") from None
    if resolved in seen:
        raise FinetuneError(f"{path}: extends: circular inheritance")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise FinetuneError(f"{path}: extends: expects one file name, relative to the recipe")
    base = _read_with_extends(path.parent / parent, seen + (resolved,))
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in place; the value is typed as YAML would type it."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise FinetuneError(f"{override}: an override is key.path=value")
    if "" in key.split("."):
        raise FinetuneError(f"{override}: an empty name in the key path {key!r}")
    try:
        value = yaml.load(text, Loader=_StrictLoader) if text else None  # noqa: S506 (a safe loader)
    except yaml.YAMLError:  # not YAML (a delimiter `,`, a template with `: `): the text itself
        value = text
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if isinstance(child, str) and part == "model":  # `model: id` shorthand, then model.x=...
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise FinetuneError(f"{key}: {part} is not a section")
        node = child
    node[leaf] = value


def _describe(err: dict[str, Any]) -> str:
    """One line for one pydantic error: the dotted path, then what is wrong."""
    transform = None
    loc, tags = [], []  # a task type's tag follows `task` (and a distillation's `student`) in pydantic's path
    for part in map(str, err["loc"]):
        if loc and loc[-1] in ("task", "student") and part in SPEC_BY_TYPE:
            tags.append(part)
        elif len(loc) >= 2 and loc[-2] == "transforms" and part in TRANSFORMS and not transform:
            transform = part  # pydantic's tag, then the transform's own key: named once
        else:
            loc.append(part)
    kind = tags[-1] if tags else None
    path = ".".join(part if part.isprintable() and part.strip() == part and part else repr(part) for part in loc)
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key" + _key_hint(loc, kind, tags)
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    if err["type"] == "union_tag_not_found":
        return f"{path}.type: required key is missing (one of {', '.join(SPEC_BY_TYPE)})"
    if err["type"] == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        match = difflib.get_close_matches(tag, list(SPEC_BY_TYPE), n=1, cutoff=0.6)
        hint = f"; did you mean {match[0]}?" if match else f" (one of {', '.join(SPEC_BY_TYPE)})"
        return f"{path}.type: {tag!r} is not a task type{hint}"
    if err["type"] == TRANSFORM_ERROR:
        return f"{path}: {_not_a_transform(err['input'])}"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":  # raised by our own validators, which name the field
        return (
            message.replace("data.transforms (", f"data.transforms.{loc[2]} (", 1) if "transforms" in loc else message
        )
    shown = err.get("input")
    value = f" (got {shown!r})" if not isinstance(shown, dict | list) and shown is not None else ""
    return f"{path or 'recipe'}: {message}{value}"


def _not_a_transform(value: Any) -> str:
    """Why a `data.transforms` entry names no transform."""
    kinds = ", ".join(TRANSFORMS)
    if isinstance(value, dict) and len(value) > 1:
        return f"one transform per entry, got {', '.join(map(str, value))} (write each as its own - item)"
    if isinstance(value, dict) and value:
        name = str(next(iter(value)))
        match = difflib.get_close_matches(name, list(TRANSFORMS), n=1, cutoff=0.6)
        return f"{name!r} is not a transform" + (f"; did you mean {match[0]}?" if match else f" (one of {kinds})")
    return f"a transform is a mapping of one key, e.g. {{rename: {{old: new}}}} (one of {kinds})"


def _key_hint(loc: list[str], kind: str | None, tags: list[str]) -> str:
    """The suggestion after an unknown key: for a key that other task types read, which (and why this one does
    not); else the nearest valid spelling."""
    if kind is not None:
        spec, key = SPEC_BY_TYPE[kind], loc[-1]
        if key in spec.key_hints:
            return f" for task type {kind} ({spec.key_hints[key]})"
        readers = [name for name, other in SPEC_BY_TYPE.items() if key in other.model_fields]
        if readers:
            return f" for task type {kind}; read by {', '.join(readers)}"
    hint = _nearest_key(loc, tags)
    if hint or kind is None:
        return f"; did you mean {hint}?" if hint else ""
    keys = {key for other in SPEC_BY_TYPE.values() for key in other.model_fields}
    match = difflib.get_close_matches(loc[-1], sorted(keys), n=1, cutoff=0.6)
    if not match:
        return ""
    readers = [name for name, other in SPEC_BY_TYPE.items() if match[0] in other.model_fields]
    return f"; did you mean task.{match[0]} (read by {', '.join(readers)})?"


def _nearest_key(loc: list[str], tags: list[str] = ()) -> str | None:
    """The valid key closest in spelling to the unknown last element of `loc`, as a dotted path; `tags`: the task
    types along it (a task's, then a distillation student's)."""
    model: type[BaseModel] = Recipe
    types = iter(tags)
    for i, part in enumerate(loc[:-1]):
        if i and loc[i - 1] == "transforms" and part.isdigit():  # an entry of data.transforms: its kind follows
            if loc[i + 1] not in TRANSFORMS:
                return None
            model = TRANSFORMS[loc[i + 1]]
            continue
        field = model.model_fields.get(part)
        tag = (
            next(types, None) if part in ("task", "student") and issubclass(model, (Recipe, DistillationSpec)) else None
        )
        inner = SPEC_BY_TYPE[tag] if tag else _section_type(field.annotation) if field else None
        if inner is None:
            return None
        model = inner
    candidates = {field.alias or name: field.alias or name for name, field in model.model_fields.items()}
    candidates.update({alias: name for alias, name in KEY_ALIASES.items() if name in model.model_fields})
    match = difflib.get_close_matches(loc[-1], list(candidates), n=1, cutoff=0.6)
    return ".".join(loc[:-1] + [candidates[match[0]]]) if match else None


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The recipe section class inside an annotation such as `EarlyStopping | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
