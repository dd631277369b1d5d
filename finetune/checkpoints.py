"""What a run writes while it trains and reads back on --resume: checkpoints, best/ and the final weights.

Every folder is written under a hidden temporary name and renamed into place, so a process killed at any moment
leaves only whole checkpoints and whole weight files in sight (tests/kills.py kills it at each write to prove it);
a write that fails (a full disk) removes its temporary folder and names the checkpoint the run can continue from.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import PeftModel
from safetensors import SafetensorError
from transformers import PreTrainedTokenizerBase

from finetune.errors import FinetuneError, SaveFailed, first_line
from finetune.progress import TrainState
from finetune.rundir import (
    CHECKPOINTS,
    STATE_FILE,
    checkpoint_dirs,
    clear_leftovers,
    latest_checkpoint,
    link_tree,
    remove_dir,
    replace_dir,
    write_json,
)

log = logging.getLogger(__name__)

BEST_DIR = "best"
FINAL_DIR = ".final"
# what the file system, safetensors and torch's zip writer (a RuntimeError naming the write) raise when a write fails
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _is_write_failure(exc: BaseException) -> bool:
    return not isinstance(exc, RuntimeError) or "write" in str(exc).lower()


class Checkpoints:
    """Saves and restores one run folder's checkpoints and weights; only the main process writes files."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, tokenizer: PreTrainedTokenizerBase, keep: int) -> None:
        self.accelerator, self.run_dir, self.tokenizer, self.keep = accelerator, run_dir, tokenizer, keep

    @contextmanager
    def _writing(self, what: str, tmp: Path, step: int) -> Iterator[None]:
        """Turn a failed write into one line naming it and the checkpoint that is still whole."""
        try:
            yield
        except WRITE_ERRORS as exc:
            if not _is_write_failure(exc):
                raise
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)  # the space it took, back
            raise write_failed(self.run_dir, what, step, exc) from None

    def save_model(self, model: torch.nn.Module, target: Path, step: int) -> None:
        """save_pretrained (model and tokenizer) into `target`, through a temporary folder."""
        acc = self.accelerator
        tmp = target.with_name(f".tmp-{target.name}")
        with self._writing(f"{target.name}/", tmp, step):
            if acc.is_main_process and tmp.exists():
                shutil.rmtree(tmp)
            acc.wait_for_everyone()
            unwrapped = acc.unwrap_model(model)
            unwrapped.save_pretrained(
                tmp,
                is_main_process=acc.is_main_process,
                save_function=acc.save,
                state_dict=acc.get_state_dict(model),
                **save_options(unwrapped),
            )
            if acc.is_main_process:
                self.tokenizer.save_pretrained(tmp)
                replace_dir(tmp, target)
        acc.wait_for_everyone()

    def save(self, model: torch.nn.Module, state: TrainState, log_records: int) -> None:
        """Model, optimizer, scheduler, RNG states, best/ and the train state, as checkpoints/step-N."""
        acc, step = self.accelerator, state.global_step
        root = self.run_dir / CHECKPOINTS
        final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
        with self._writing(f"the checkpoint {final}", tmp, step):
            if acc.is_main_process and tmp.exists():
                shutil.rmtree(tmp)
            acc.wait_for_everyone()
            acc.save_state(str(tmp))
            unwrapped = acc.unwrap_model(model)
            if has_adapter(model):  # the adapter too, so that `finetune eval` reads a checkpoint as it reads a run
                unwrapped.save_pretrained(
                    tmp,
                    is_main_process=acc.is_main_process,
                    state_dict=acc.get_state_dict(model),
                    **save_options(unwrapped),
                )
            acc.wait_for_everyone()  # every process has written its RNG state before the folder is renamed
            if acc.is_main_process:
                unwrapped.config.save_pretrained(tmp)
                if hasattr(unwrapped, "write_settings"):  # a head of ours that config.json alone cannot rebuild
                    unwrapped.write_settings(tmp)
                self.tokenizer.save_pretrained(tmp)
                write_json(tmp / STATE_FILE, {**asdict(state), "log_records": log_records})
                if (self.run_dir / BEST_DIR).is_dir():  # the best weights so far belong to the checkpoint's state
                    link_tree(self.run_dir / BEST_DIR, tmp / BEST_DIR)
                replace_dir(tmp, final)
                for old in checkpoint_dirs(self.run_dir)[: -self.keep]:
                    remove_dir(old)
        acc.wait_for_everyone()

    def load(self, model: torch.nn.Module, folder: Path) -> dict[str, Any]:
        """Restore a checkpoint into the prepared objects and best/ into the run folder; its saved train state."""
        try:
            # a 4-bit base stores its quantisation constants beside the weights, which its layers do not read back
            self.accelerator.load_state(str(folder), strict=not has_adapter(model))
            saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except Exception as exc:  # torch, safetensors and json each raise their own kinds on a damaged file
            raise FinetuneError(
                f"--resume: the checkpoint {folder} does not load ({first_line(exc)}); delete it to resume from the "
                "one before"
            ) from None
        best = self.run_dir / BEST_DIR  # the checkpoint's, not one an evaluation after it saved
        if self.accelerator.is_main_process:
            clear_leftovers(self.run_dir)
            if (folder / BEST_DIR).is_dir():
                link_tree(folder / BEST_DIR, best.with_name(f".tmp-{BEST_DIR}"))
                replace_dir(best.with_name(f".tmp-{BEST_DIR}"), best)
            elif best.is_dir():
                shutil.rmtree(best)
        self.accelerator.wait_for_everyone()
        return saved

    def save_final(self, model: torch.nn.Module, step: int, from_best: bool) -> None:
        """The final weights into the run folder: best/'s (linked), or the model's; each file whole, by a rename."""
        final = self.run_dir / FINAL_DIR
        with self._writing("the final weights", final, step):
            if not from_best:
                self.save_model(model, final, step)
            if self.accelerator.is_main_process:
                if from_best:
                    link_tree(self.run_dir / BEST_DIR, final)
                for item in sorted(final.iterdir()):
                    item.replace(self.run_dir / item.name)
                shutil.rmtree(final)  # a rename onto a hard link of the same file (a resumed run's) leaves both names
        self.accelerator.wait_for_everyone()


def write_failed(run_dir: Path, what: str, step: int | None, exc: BaseException) -> SaveFailed:
    """The error for a failed write: what and when, and the checkpoint the run continues from, if any."""
    last = latest_checkpoint(run_dir)
    kept = f"the checkpoint {last} is whole" if last else "no checkpoint was written before it"
    when = "" if step is None else f" at step {step}"
    return SaveFailed(f"writing {what}{when} failed ({first_line(exc)}); {kept}", last and str(run_dir))


def has_adapter(model: torch.nn.Module) -> bool:
    """Does the model train peft adapters (possibly inside a head of ours)?"""
    return any(isinstance(module, PeftModel) for module in model.modules())


def save_options(model: torch.nn.Module) -> dict[str, bool]:
    """peft saves whole embedding matrices when the vocabulary grew; the added tokens' rows are in the adapter."""
    return {"save_embedding_layers": False} if isinstance(model, PeftModel) else {}
