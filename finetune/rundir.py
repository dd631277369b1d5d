"""The run folder: where a run writes its recipe, logs, checkpoints, metrics and final model."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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
MARKER = ".finetune-run"  # written when a run folder is created: --overwrite replaces only folders that hold it


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
        path = Path(recipe.output_dir).expanduser()
    elif resume:
        path = _newest_resumable(Path("runs") / recipe.name)
    else:
        path = Path("runs") / recipe.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    if path.exists() and not path.is_dir():
        raise FinetuneError(f"output_dir: {path} is a file, not a folder")
    occupied = path.is_dir() and any(path.iterdir())
    if resume and latest_checkpoint(path) is None:
        raise FinetuneError(f"--resume: no checkpoint in {path}/{CHECKPOINTS}")
    if occupied and not (resume or overwrite):
        raise FinetuneError(f"output_dir: {path} is not empty; pass --overwrite to replace it or --resume to continue")
    if occupied and overwrite and not resume:
        if path.is_symlink():
            raise FinetuneError(
                f"output_dir: {path} is a symbolic link; --overwrite deletes only a run folder named by its own path"
            )
        if not is_run_dir(path):
            raise FinetuneError(
                f"output_dir: {path} is not a run folder (no {MARKER} in it), so --overwrite will not delete it; "
                "name an empty or new folder"
            )
        with _held(path):  # not while another process writes it
            pass
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / MARKER).touch()
    except OSError as exc:
        raise FinetuneError(f"output_dir: cannot write {path}: {exc.strerror or exc}") from None
    return path


@contextmanager
def locked(run_dir: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold the run folder for this run (the main process locks its marker), so that no second run, resume or
    --overwrite touches it meanwhile; a folder held by another process is refused in one line."""
    if not accelerator.is_main_process:
        yield
        return
    with _held(run_dir) as handle:
        handle.write(f"finetune process {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


@contextmanager
def _held(run_dir: Path) -> Iterator[Any]:
    """The run folder's marker, open and locked; an error naming the holder when another process has it."""
    with (run_dir / MARKER).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FinetuneError(f"output_dir: {run_dir} is in use by {holder}; wait for it to end") from None
        handle.seek(0)
        handle.truncate()
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(path: Path, flag: str, folder: bool = False, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work is done, an output `path` (a file, or with `folder` a new or empty folder) that
    cannot be written or that is one of the command's `inputs`; `flag` names the option in the one-line error."""
    if folder and path.exists() and not path.is_dir():
        raise FinetuneError(f"{flag}: {path} is a file, not a folder")
    if not folder and path.is_dir():
        raise FinetuneError(f"{flag}: {path} is a folder; name a file")
    if any(path.exists() and source.exists() and path.resolve() == source.resolve() for source in inputs):
        raise FinetuneError(f"{flag}: {path} is also the input; writing there would destroy it")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not folder and not path.parent.is_dir():
        raise FinetuneError(f"{flag}: the folder {path.parent} does not exist")
    if not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise FinetuneError(f"{flag}: cannot write {path} (permission denied)")


def is_run_dir(path: Path) -> bool:
    """Was `path` created as a run folder (it holds the marker every run folder gets at creation)?"""
    return (path / MARKER).is_file() and not (path / MARKER).is_symlink()


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


# what a resumed run may change: where and how often it reports and saves, never what it trains
RESUMABLE_CHANGES = (
    "name",
    "description",
    "output_dir",
    "train.log_every",
    "train.report_to",
    "train.save_every",
    "train.keep_checkpoints",
    "train.eval_batch_size",
    "hub",
)


def check_resumable(run_dir: Path, recipe: Recipe) -> None:
    """Refuse, in one line naming each setting, a resume whose recipe would train differently from the run in
    `run_dir` (a resumed run must train what its recipe.yaml records; its optimizer, schedule and data order come
    from the checkpoint)."""
    path = run_dir / RECIPE_FILE
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(saved, dict):
        raise FinetuneError(f"--resume: {run_dir} has no readable {RECIPE_FILE}, so its run cannot be continued")
    new = recipe.model_dump(mode="json")
    changed = [
        f"{key} ({_get(saved, key)!r} -> {_get(new, key)!r})"
        for key in sorted(_changed_keys(saved, new))
        if not any(key == free or key.startswith(f"{free}.") for free in RESUMABLE_CHANGES)
    ]
    if changed:
        raise FinetuneError(
            f"--resume: {'; '.join(changed)} changed since the checkpoint; a resumed run trains what {path} "
            "records: restore the setting, or start a new run"
        )


def _get(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
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
    tmp.write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float as None (null): JSON has no such numbers, and other tools' readers
    refuse the `NaN` Python would write."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class JsonlLog:
    """Appends one JSON object per line (log.jsonl); only the main process writes."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(finite(record), allow_nan=False) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """The complete records: a process killed while appending leaves its last line without its newline."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")[:-1]  # what follows the last newline is torn
        return [json.loads(line) for line in lines if line]

    def keep_first(self, count: int) -> None:
        """Keep the first `count` records (those written before a checkpoint; a resumed run rewrites the rest)."""
        if self.enabled and self.path.is_file():
            kept = self.read()[:count]
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.path)


def link_tree(source: Path, target: Path) -> None:
    """A copy of the folder `source` at `target` (written afresh) made of hard links where the file system allows:
    the files are replaced, never rewritten, so a link keeps the version it was made from at no cost in space."""
    if target.exists():
        shutil.rmtree(target)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def remove_dir(folder: Path) -> None:
    """Delete `folder` after hiding it, so that a deletion cut short never leaves a folder that looks complete."""
    hidden = folder.with_name(f".old-{folder.name}")
    folder.rename(hidden)
    shutil.rmtree(hidden)


def clear_leftovers(run_dir: Path) -> None:
    """Remove the hidden folders and temporary files that writes cut short by a killed process left behind."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        for item in [*folder.glob(".tmp-*"), *folder.glob(".old-*"), *folder.glob(".final"), *folder.glob("*.tmp")]:
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


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
