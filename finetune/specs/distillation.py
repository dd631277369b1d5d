"""distillation: a student learns a task from a teacher's soft predictions as well as from the gold labels
(DistilBERT, Sanh et al. 2019)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from finetune.specs.base import TaskSpecBase
from finetune.specs.multiple_choice import MultipleChoiceSpec
from finetune.specs.texts import ClassificationSpec, EntailmentSpec, RegressionSpec, SimilaritySpec

StudentTask = Annotated[
    Union[ClassificationSpec, RegressionSpec, EntailmentSpec, SimilaritySpec, MultipleChoiceSpec],  # noqa: UP007
    Field(discriminator="type"),
]


class DistillationSpec(TaskSpecBase):
    """distillation: the student (model:) learns task.student from a teacher that already does it: `alpha_ce` x
    the KL divergence from the teacher's to the student's distribution at temperature T (times T^2, so that its
    gradients keep their scale; a score's: the squared error to the teacher's score) + `alpha_label` x the task's
    own loss on the gold labels + `alpha_cos` x the cosine distance between the last hidden states (where the
    widths match). The teacher runs in inference mode; its logits are computed once per training example when
    cached. `model.init_from_teacher: every_other_layer` builds the student from the teacher itself with every
    other transformer block (DistilBERT's initialisation). Evaluation and prediction are the student's task's."""

    type: Literal["distillation"] = Field(description="distillation")
    teacher: str = Field(
        description="A run folder of the same task and classes (./runs/sst2-minilm/<timestamp>), or a checkpoint "
        "fine-tuned for them (Hub id or local path)."
    )
    student: StudentTask = Field(
        description="The task both models do, as its own task section ({type: classification, text_a: sentence})."
    )
    temperature: PositiveFloat = Field(2.0, description="Softmax temperature of both distributions in the KL term.")
    alpha_ce: NonNegativeFloat = Field(0.5, description="Weight of the teacher's soft targets (the KL term).")
    alpha_label: NonNegativeFloat = Field(0.5, description="Weight of the task's loss on the gold labels.")
    alpha_cos: NonNegativeFloat = Field(
        0.0, description="Weight of the cosine loss between the student's and teacher's last hidden states."
    )
    cache_teacher: bool = Field(
        True,
        description="Compute the teacher's logits once per training example before training (exact: the "
        "teacher is in inference mode); false runs the teacher on every batch.",
    )

    task_class: ClassVar[str] = "distillation:Distillation"

    @model_validator(mode="after")
    def _some_loss(self) -> DistillationSpec:
        if self.alpha_ce + self.alpha_label + self.alpha_cos == 0:
            raise ValueError("task.alpha_ce: alpha_ce, alpha_label and alpha_cos are all 0; nothing would be learned")
        if self.alpha_cos > 0 and self.cache_teacher:
            raise ValueError(
                "task.alpha_cos: the cosine loss reads the teacher's hidden states on every batch; set "
                "task.cache_teacher: false"
            )
        if self.metrics:
            raise ValueError("task.metrics: the student's task says what is measured; set task.student.metrics")
        return self

    # the task is the student's: its traits, keys and checks
    @property
    def predicts(self) -> str:  # type: ignore[override]
        return self.student.predicts

    @property
    def default_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.student.metric_names)

    @property
    def families(self) -> frozenset[str]:  # type: ignore[override]
        return self.student.families

    @property
    def pipeline_tag(self) -> str:  # type: ignore[override]
        return self.student.pipeline_tag

    @property
    def symmetric(self) -> bool:  # type: ignore[override]
        return self.student.symmetric

    @property
    def class_names(self) -> list[str] | None:
        return self.student.class_names

    def fields(self, role: str = "train") -> dict[str, str]:
        return {key.replace("task.", "task.student.", 1): path for key, path in self.student.fields(role).items()}

    def settled(self, family: str, model_type: str | None) -> DistillationSpec:
        return self.model_copy(update={"student": self.student.settled(family, model_type)})

    def with_labels(self, labels: list[str]) -> DistillationSpec:
        return self.model_copy(update={"student": self.student.with_labels(labels)})

    def family_problems(self, family: str, model_name: str, max_length: int, max_target_length: int) -> list[str]:
        return self.student.family_problems(family, model_name, max_length, max_target_length)

    def head_problems(self, family: str, model_type: str | None, model_name: str) -> list[str]:
        return self.student.head_problems(family, model_type, model_name)

    def path_problems(self) -> list[str]:
        local = self.teacher.startswith(("./", "../", "/", "~"))
        if local and not Path(self.teacher).expanduser().is_dir():
            return [f"task.teacher: no such folder: {self.teacher}"]
        return []

    def check_rows(self, split: str, role: str, rows: list[dict], labels: list[str] | None) -> tuple[list, list]:
        return self.student.check_rows(split, role, rows, labels)

    def classes_problem(self, labels: list[str]) -> str | None:
        return self.student.classes_problem(labels)

    def __getattr__(self, name: str) -> Any:
        """Everything else is the student's task's: its columns, label reader, class list, f1 settings."""
        if name.startswith("_") or name == "student":
            return super().__getattr__(name)
        return getattr(self.student, name)
