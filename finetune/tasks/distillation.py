"""Knowledge distillation (DistilBERT): the student's task, with the teacher's soft predictions as a second target.

The student formats, evaluates and predicts exactly as its own task (`task.student`) does; only the training loss
changes. Per example, the KL divergence from the teacher's softmax to the student's at temperature T, times T^2
(Hinton et al.: the soft targets' gradients shrink as 1/T^2); for a score, the squared difference to the teacher's.
A multiple-choice example's padded candidates are -inf for both and take no part. The cosine term compares the
last transformer block's outputs, token by token over the real tokens.

With `cache_teacher` the teacher scores every training example once before training (in inference mode, so the
cache is exact: dropout is off) and is then freed; otherwise it runs beside the student on every batch.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune.batching import pad_sequences
from finetune.errors import FinetuneError, first_line
from finetune.gguf_models import local_checkpoint
from finetune.losses import Loss
from finetune.mirrors import resolve_model
from finetune.model import LOAD_ERRORS, transformer_blocks
from finetune.rundir import find_recipe
from finetune.specs.distillation import DistillationSpec
from finetune.tasks import build_task

log = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"
MASKED = -1e4  # a padded candidate's logit inside the softmax: its probability is 0, its gradient finite


class Distillation:
    """The student's task (every attribute not defined here is the student task's) with the distillation loss."""

    name = "distillation"

    def __init__(
        self, spec: DistillationSpec, labels: list[str] | None, family: str = "encoder", **settings: Any
    ) -> None:
        self.spec = spec
        self.student = build_task(spec.student, labels, family, **settings)
        self.teacher: tuple[torch.nn.Module, Any] | None = None  # (model, its task) while it runs beside the student

    def __getattr__(self, name: str) -> Any:
        if name in ("student", "spec", "teacher"):
            raise AttributeError(name)
        return getattr(self.student, name)

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None) -> TeacherLogitsCollator:
        return TeacherLogitsCollator(self.student.collator(tokenizer, pad_to_multiple_of))

    def prepare_training(
        self, train: Any, tokenizer: PreTrainedTokenizerBase, accelerator: Any, batch_size: int
    ) -> Any:
        """Load the teacher and check it does the student's task on the student's tokens; with the cache, its logits
        for every training example as a column (and the teacher freed), else the teacher kept on the device."""
        model, task = self._load_teacher(tokenizer)
        if not self.learns_from_teacher:  # checked, and not needed: the student learns from the labels alone
            return train
        model = model.to(accelerator.device).eval().requires_grad_(False)
        if not self.spec.cache_teacher:
            self.teacher = (model, task)
            return train
        loader = DataLoader(train, batch_size=batch_size, collate_fn=self.student.collator(tokenizer, None))
        rows = []
        with torch.no_grad(), accelerator.autocast():
            for batch in loader:
                inputs = {k: v.to(accelerator.device) for k, v in batch.items() if k != "labels"}
                _, logits = task.forward(model, inputs)
                rows += [[x for x in row if math.isfinite(x)] for row in logits.float().cpu().tolist()]
        log.info("teacher logits cached for %d training examples", len(rows))
        return train.add_column(TEACHER_LOGITS, rows)

    def _load_teacher(self, tokenizer: PreTrainedTokenizerBase) -> tuple[torch.nn.Module, Any]:
        from finetune.loaded_run import load_run  # loads tasks itself

        name = self.spec.teacher
        folder = Path(name).expanduser()
        try:
            find_recipe(folder)  # a run folder or one of its checkpoints
        except FinetuneError:
            folder = None
        if folder is not None:
            run = load_run(folder, prepare=False)
            model, task, theirs, labels = run.model, run.task, run.tokenizer, run.task.labels
        else:
            try:
                location = local_checkpoint(resolve_model(name))
                model = self.student.model_class.from_pretrained(location, use_safetensors=True)  # never a pickle
                theirs = AutoTokenizer.from_pretrained(location)
            except LOAD_ERRORS as exc:
                raise FinetuneError(f"task.teacher: cannot load {name}: {first_line(exc)}") from None
            task = self.student
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)] if self.labels else None
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise FinetuneError(
                f"task.teacher: its tokenizer ({len(theirs)} tokens) is not the student's ({len(tokenizer)}); both "
                "models must read the same tokens"
            )
        if self.labels and labels != self.labels:
            raise FinetuneError(
                f"task.teacher: its classes ({', '.join(map(str, labels or []))}) are not the student's "
                f"({', '.join(self.labels)})"
            )
        if getattr(task, "num_labels", None) != self.student.num_labels:
            raise FinetuneError(f"task.teacher: {name} does not predict what task.student does")
        return model, task

    @property
    def learns_from_teacher(self) -> bool:
        """False when alpha_ce and alpha_cos are 0: the teacher only gave the student its initial weights."""
        return self.spec.alpha_ce > 0 or self.spec.alpha_cos > 0

    def loss_items(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        items = self.student.loss_items(batch)
        items["kd"] = items["task"]
        if self.spec.alpha_cos > 0:
            items["cos"] = batch["attention_mask"].sum()
        return items

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Loss | None, torch.Tensor]:
        """The student's loss and logits; in training, with the teacher's terms added."""
        cached = batch.pop(TEACHER_LOGITS, None)
        if not model.training or "labels" not in batch:  # evaluation and prediction are the student's
            return self.student.forward(model, batch)
        if not self.learns_from_teacher:
            loss, logits = self.student.forward(model, batch)
            return Loss(self._label_terms(loss), loss.items, loss.per_example), logits
        hidden: dict[str, torch.Tensor] = {}
        hooks = [_capture_last_block(model, hidden, "student")] if self.spec.alpha_cos > 0 else []
        loss, logits = self.student.forward(model, batch)
        if cached is None:
            teacher, task = self.teacher
            if self.spec.alpha_cos > 0:
                hooks.append(_capture_last_block(teacher, hidden, "teacher"))
            with torch.no_grad():
                _, cached = task.forward(teacher, {k: v for k, v in batch.items() if k != "labels"})
        for hook in hooks:
            hook.remove()
        sums = self._label_terms(loss)
        sums["kd"] = self.spec.alpha_ce * self.soft_target_losses(logits, cached.to(logits.dtype)).sum()
        if self.spec.alpha_cos > 0:
            sums["cos"] = self.spec.alpha_cos * cosine_losses(hidden, batch["attention_mask"]).sum()
        return Loss(sums, self.loss_items(batch), loss.per_example), logits

    def _label_terms(self, loss: Loss) -> dict[str, torch.Tensor]:
        """The student's own loss terms, its task term weighted by alpha_label (a decoder head's LM term kept)."""
        return {k: v * self.spec.alpha_label if k == "task" else v for k, v in loss.sums.items()}

    def soft_target_losses(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per example: T^2 x KL(teacher || student) at temperature T; a score's squared difference."""
        if self.spec.student.predicts_score:
            return (student.reshape(-1).float() - teacher.reshape(-1).float()) ** 2
        real = torch.isfinite(student) & torch.isfinite(teacher)
        t = self.spec.temperature
        log_p = F.log_softmax(teacher.float().masked_fill(~real, MASKED) / t, dim=-1)
        log_q = F.log_softmax(student.float().masked_fill(~real, MASKED) / t, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1) * t * t


def _capture_last_block(model: torch.nn.Module, hidden: dict, key: str) -> Any:
    """A hook keeping the last transformer block's output under `key`."""
    blocks = next(iter(transformer_blocks(getattr(model, "module", model)).values()))

    def keep(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        hidden[key] = output[0] if isinstance(output, tuple) else output

    return blocks[-1].register_forward_hook(keep)


def cosine_losses(hidden: dict[str, torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """1 - cos(student, teacher) at every real token (the batch's attention mask, flattened like the states)."""
    student, teacher = hidden["student"], hidden["teacher"]
    if student.shape[-1] != teacher.shape[-1]:
        raise FinetuneError(
            f"task.alpha_cos: the student's width {student.shape[-1]} is not the teacher's {teacher.shape[-1]}; "
            "set task.alpha_cos: 0"
        )
    real = attention_mask.reshape(-1, attention_mask.shape[-1]).bool()
    return 1 - F.cosine_similarity(student[real].float(), teacher[real].float(), dim=-1)


class TeacherLogitsCollator:
    """The student's collation, with the cached teacher logits padded (-inf where an example has fewer candidates)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if TEACHER_LOGITS not in features[0]:
            return self.inner(features)
        logits = [f[TEACHER_LOGITS] for f in features]
        batch = self.inner([{k: v for k, v in f.items() if k != TEACHER_LOGITS} for f in features])
        batch[TEACHER_LOGITS] = pad_sequences(logits, float("-inf")).float()
        return batch
