"""The run folder: where a run writes its recipe, logs, checkpoints, metrics and final model."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from finetune.errors import FinetuneError
from finetune.recipe import Recipe, dump_recipe

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
BASE_FILE = "base_model.json"  # what the recipe's model name resolved to: origin and what the weights are
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


def choose_run_dir(recipe: Recipe, overwrite: bool, resume: bool, accelerator: Accelerator) -> Path:
    """The run folder: the recipe's output_dir or runs/<name>/<timestamp>; with --resume and no output_dir,
    the newest run of this recipe that has a checkpoint. The main process decides and prepares it."""
    chosen = [None]
    if accelerator.is_main_process:
        chosen = [_prepare_run_dir(recipe, overwrite, resume)]
    accelerator.wait_for_everyone()
    return Path(broadcast_object_list(chosen)[0])


def _prepare_run_dir(recipe: Recipe, overwrite: bool, resume: bool) -> Path:
    if recipe.output_dir:
        path = Path(recipe.output_dir)
    elif resume:
        path = _newest_resumable(Path("runs") / recipe.name)
    else:
        path = Path("runs") / recipe.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    occupied = path.is_dir() and any(path.iterdir())
    if resume and latest_checkpoint(path) is None:
        raise FinetuneError(f"--resume: no checkpoint in {path}/{CHECKPOINTS}")
    if occupied and not (resume or overwrite):
        raise FinetuneError(f"output_dir: {path} is not empty; pass --overwrite to replace it or --resume to continue")
    if occupied and overwrite and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _newest_resumable(root: Path) -> Path:
    runs = sorted(p for p in root.glob("*") if latest_checkpoint(p) is not None) if root.is_dir() else []
    if not runs:
        raise FinetuneError(f"--resume: no run of this recipe with a checkpoint under {root}; set output_dir")
    return runs[-1]


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (an interrupted write leaves only a hidden temporary folder)."""
    root = run_dir / CHECKPOINTS
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def write_recipe(run_dir: Path, recipe: Recipe, base: dict[str, Any]) -> None:
    """The resolved recipe, and what its base model is (`mirrors.base_record`)."""
    (run_dir / RECIPE_FILE).write_text(dump_recipe(recipe), encoding="utf-8")
    write_json(run_dir / BASE_FILE, base)


def warn_if_changed(run_dir: Path, recipe: Recipe) -> None:
    """Say which settings differ from the run being resumed (only an unchanged recipe resumes exactly)."""
    path = run_dir / RECIPE_FILE
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    changed = sorted(_changed_keys(saved or {}, recipe.model_dump(mode="json")))
    if changed:
        log.warning(
            "resuming with a changed recipe (%s); the result will differ from an uninterrupted run", ", ".join(changed)
        )


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key != "output_dir":
            keys.append(f"{prefix}{key}")
    return keys


def find_recipe(folder: Path) -> Path:
    """The resolved recipe of a run folder or of a checkpoint inside one."""
    for candidate in (folder, *folder.parents[:2]):
        if (candidate / RECIPE_FILE).is_file():
            return candidate / RECIPE_FILE
    raise FinetuneError(f"{folder}: not a run folder (no {RECIPE_FILE} here or above)")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


class JsonlLog:
    """Appends one JSON object per line (log.jsonl); only the main process writes."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]

    def keep_first(self, count: int) -> None:
        """Keep the first `count` records (those written before a checkpoint; a resumed run rewrites the rest)."""
        if self.enabled and self.path.is_file():
            kept = self.read()[:count]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def replace_dir(new: Path, target: Path) -> None:
    """Swap `new` in for `target` with renames, so `target` is never half written."""
    if target.exists():
        old = target.with_name(f".old-{target.name}")
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)
