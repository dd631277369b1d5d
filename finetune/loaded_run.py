"""A finished run, or one of its checkpoints, loaded back to score, predict, merge or push."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune.accelerator import make_accelerator
from finetune.adapters import is_adapter_dir
from finetune.families import detect_family, read_config
from finetune.mirrors import resolve_model
from finetune.model import load_adapter, load_finetuned, resolve_architecture, with_vocabulary
from finetune.recipe import Recipe, load_recipe
from finetune.rundir import find_recipe
from finetune.tasks import Task, prepare_task
from finetune.validate import Report


@dataclass
class LoadedRun:
    """A finished run (or checkpoint) ready to score: its recipe, task, tokenizer and prepared model."""

    recipe: Recipe
    task: Task
    tokenizer: PreTrainedTokenizerBase
    model: Any
    accelerator: Any

    def loader(self, features: Any) -> DataLoader:
        collator = self.task.collator(self.tokenizer, pad_to_multiple_of=None)
        loader = DataLoader(features, batch_size=self.recipe.train.eval_batch_size, collate_fn=collator)
        return self.accelerator.prepare(loader)


def load_run(folder: Path, dequantize: bool = False, prepare: bool = True) -> LoadedRun:
    """Load a run folder or one of its checkpoints onto this machine's device (an adapter run's 4/8-bit base
    in full precision with `dequantize`; left on the CPU, with no accelerator, without `prepare`)."""
    recipe = load_recipe(find_recipe(folder))
    if is_adapter_dir(folder):
        task, tokenizer, model = _load_adapter_run(recipe, folder, dequantize)
    else:
        family = detect_family(read_config(folder)) if recipe.model.family == "auto" else recipe.model.family
        model, tokenizer = load_finetuned(str(folder), prepare_task(recipe, None, family).model_class)
        labels = None
        if recipe.task.has_classes:
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        # GPT-1's tokens and the pad token are already in the saved tokenizer: this only looks their ids up
        task = prepare_task(recipe, labels, family, tokenizer)
    if not prepare:
        return LoadedRun(recipe, task, tokenizer, model.eval(), None)
    accelerator = make_accelerator(recipe.train.model_copy(update={"grad_accum": 1}))
    return LoadedRun(recipe, task, tokenizer, accelerator.prepare(model), accelerator)


def _load_adapter_run(recipe: Recipe, folder: Path, dequantize: bool) -> tuple[Task, PreTrainedTokenizerBase, Any]:
    """An adapter run: its base checkpoint, built as in training, with the saved adapter and head."""
    resolved = resolve_model(recipe.model.name)
    known = None if recipe.model.family == "auto" else recipe.model.family
    family, _ = resolve_architecture(recipe.model, Report(model=resolved, family=known))
    tokenizer = with_vocabulary(AutoTokenizer.from_pretrained(folder), str(folder))
    task = prepare_task(recipe, recipe.task.class_names, family, tokenizer)
    return task, tokenizer, load_adapter(recipe, resolved, task, tokenizer, folder, dequantize)
