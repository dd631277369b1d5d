"""Experiment tracking through accelerate's trackers: TensorBoard event files in the run folder by default, and
Weights & Biases, MLflow or Trackio on request (`train.report_to`). Each receives every scalar log.jsonl records
and the resolved recipe; what they receive passes through `errors.redact`, so no Hugging Face token reaches one.

Importing this module is cheap (no accelerate, no torch): `finetune validate` checks the trackers' packages."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError, redact

TENSORBOARD_DIR = "tensorboard"
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def missing_trackers(names: list[str]) -> list[str]:
    """One problem per tracker whose package is not installed (torch-free: `finetune validate` asks)."""
    return [
        f"train.report_to: {name} needs the {PACKAGES[name]} package (pip install {PACKAGES[name]}), or remove it"
        for name in names
        if importlib.util.find_spec(PACKAGES[name]) is None
        and not (name == "tensorboard" and importlib.util.find_spec("tensorboard") is not None)
    ]


class Trackers:
    """The run's trackers, started on the main process (accelerate's trackers act there only)."""

    def __init__(self, names: list[str], run_dir: Path, project: str, config: dict[str, Any], first_step: int) -> None:
        problems = missing_trackers(names)
        if problems:
            raise FinetuneError(*problems)
        self.trackers = [_tracker(name, run_dir, project, first_step) for name in names]
        flat = _flat(config)
        for tracker in self.trackers:
            tracker.start()
            tracker.store_init_configuration(flat)

    def log(self, record: dict[str, Any]) -> None:
        """A log.jsonl record as scalars at its step: `train/loss`, `train/lr`, ..., `eval/accuracy`, ..."""
        values = {
            (f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"): value
            for key, value in record.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }
        for tracker in self.trackers:
            tracker.log(values, step=record["step"])

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def _tracker(name: str, run_dir: Path, project: str, first_step: int) -> Any:
    # imported here: `finetune validate` asks `missing_trackers` without loading accelerate (and torch)
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

    if name == "tensorboard":
        # a resumed run drops the events its lost branch wrote after the checkpoint (they are logged again)
        purge = {"purge_step": first_step + 1} if first_step else {}
        return TensorBoardTracker("", run_dir / TENSORBOARD_DIR, **purge)
    if name == "wandb":
        return WandBTracker(project, dir=str(run_dir))
    if name == "mlflow":
        return MLflowTracker(project, run_name=run_dir.name)
    return TrackioTracker(project)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The recipe as flat scalar hyperparameters (`train.lr`), lists as text, every text redacted."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float) or value is None:
            flat[f"{prefix}{key}"] = value if value is not None else "null"
        else:
            flat[f"{prefix}{key}"] = redact(str(value))
    return flat
