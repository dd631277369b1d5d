"""Model: the tokenizer and the backbone with its task head, from a local folder, a mirror or the Hub."""

from __future__ import annotations

import logging

from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from finetune.errors import FinetuneError
from finetune.mirrors import ResolvedModel
from finetune.recipe.schema import ModelSpec
from finetune.tasks import Task

log = logging.getLogger(__name__)


def load_tokenizer(spec: ModelSpec, resolved: ResolvedModel) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer."""
    try:
        return AutoTokenizer.from_pretrained(
            resolved.location, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"model.name: cannot load a tokenizer from {spec.name}: {_first_line(exc)}") from None


def build_model(spec: ModelSpec, resolved: ResolvedModel, task: Task) -> PreTrainedModel:
    """The pretrained backbone with a fresh head sized for the task (class names stored as id2label)."""
    head = {"num_labels": task.num_labels, "problem_type": task.problem_type}
    if task.labels:
        head["id2label"] = dict(enumerate(task.labels))
        head["label2id"] = {name: i for i, name in enumerate(task.labels)}
    try:
        config = AutoConfig.from_pretrained(
            resolved.location, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **head
        )
        model = task.model_class.from_pretrained(
            resolved.location, config=config, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"model.name: cannot load {spec.name}: {_first_line(exc)}") from None
    log.info(
        "model %s (%s, from %s): %.1fM parameters",
        spec.name,
        config.model_type,
        resolved.origin,
        model.num_parameters() / 1e6,
    )
    return model


def load_finetuned(folder: str, model_class: type) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer saved by a run (its folder or one of its checkpoints)."""
    try:
        return model_class.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"{folder}: cannot load the fine-tuned model: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
