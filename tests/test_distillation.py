"""task.type: distillation: the soft-target loss is T^2 x KL, padded candidates take no part, a cached teacher
trains the very weights a teacher run on every batch does, DistilBERT's every-other-layer student, and the
mistakes a user makes are one line each."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import recipe_file, run_cli
from safetensors.torch import load_file

from finetune.recipe import validate_dict
from finetune.tasks import build_task


def distillation(student: dict, **settings):
    spec = validate_dict(
        {
            "model": "x/y",
            "task": {"type": "distillation", "teacher": "x/teacher", "student": student, **settings},
            "data": {"files": {"train": "t.tsv", "validation": "v.tsv"}},
        }
    ).task
    return build_task(spec, spec.class_names)


def test_soft_targets_are_t_squared_kl_and_padded_candidates_take_no_part():
    task = distillation({"type": "classification", "text_a": "s", "labels": ["a", "b", "c"]}, temperature=3.0)
    student, teacher = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    expected = F.kl_div(
        F.log_softmax(student / 3, -1), F.log_softmax(teacher / 3, -1), log_target=True, reduction="none"
    )
    assert torch.allclose(task.soft_target_losses(student, teacher), expected.sum(-1) * 9, atol=1e-6)

    choice = distillation({"type": "multiple_choice", "context": "q", "choices": ["a", "b", "c"]})
    padded = torch.tensor([[1.0, 2.0, float("-inf")], [0.5, -1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 3.0, float("-inf")], [1.0, 1.0, 1.0]])
    losses = choice.soft_target_losses(padded, teacher)
    alone = choice.soft_target_losses(padded[:1, :2], teacher[:1, :2])  # the first example without its padding
    assert torch.allclose(losses[0], alone[0], atol=1e-6)
    losses.sum().backward()
    assert torch.isfinite(padded.grad).all() and padded.grad[0, 2] == 0

    score = distillation({"type": "regression", "text_a": "s"})
    assert torch.allclose(
        score.soft_target_losses(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [2.0]])), torch.tensor([0.25, 0.0])
    )


def test_the_tokenization_cache_is_the_students():
    """Rows are formatted by the student: changing the distillation's weights or temperature reuses the cached
    tokenization; changing what the student reads does not."""
    student = {"type": "classification", "text_a": "s", "labels": ["a", "b"]}
    first = distillation(student, alpha_ce=0.5).formatting_identity()
    assert distillation(student, alpha_ce=0.9, temperature=4.0).formatting_identity() == first
    assert distillation({**student, "text_a": "t"}, alpha_ce=0.5).formatting_identity() != first


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert):
    """A tiny BERT classifier fine-tuned on real SST-2 rows: the teacher run."""
    from conftest import GLUE, sample_file

    folder = tmp_path_factory.mktemp("teacher")
    rows = sample_file(folder, GLUE / "sst2" / "train.tsv", 65)
    recipe = recipe_file(
        folder,
        f"""
model: {tiny_bert}
task: {{type: classification, text_a: sentence, label: label, labels: ['0', '1']}}
data: {{files: {{train: {rows}, validation: {rows}}}, reader: {{quoting: none}}}}
train: {{epochs: 2, batch_size: 8, lr: 1.0e-3}}
""",
        "teacher.yaml",
    )
    assert run_cli("train", recipe, f"output_dir={folder / 'run'}").exit_code == 0
    return folder / "run", rows


def student_recipe(tmp_path, teacher_run, rows, extra: str = "", labels: str = "['0', '1']") -> object:
    return recipe_file(
        tmp_path,
        f"""
model: {{name: {teacher_run}, init_from_teacher: every_other_layer}}
task:
  type: distillation
  teacher: {teacher_run}
  student: {{type: classification, text_a: sentence, label: label, labels: {labels}}}
  temperature: 2.0{extra}
data: {{files: {{train: {rows}, validation: {rows}}}, reader: {{quoting: none}}}}
train: {{max_steps: 4, batch_size: 8, lr: 1.0e-3, eval_every: 4}}
""",
        "student.yaml",
    )


def test_a_cached_teacher_trains_the_same_weights_as_a_running_one(tmp_path, teacher):
    run, rows = teacher
    recipe = student_recipe(tmp_path, run, rows)
    weights = {}
    for cache in ("true", "false"):
        result = run_cli("train", recipe, f"task.cache_teacher={cache}", f"output_dir={tmp_path / cache}")
        assert result.exit_code == 0
        weights[cache] = load_file(tmp_path / cache / "model.safetensors")
    teacher_weights = load_file(run / "model.safetensors")
    assert weights["true"].keys() == weights["false"].keys()
    for name, tensor in weights["true"].items():
        assert torch.allclose(tensor, weights["false"][name], atol=1e-6), name
    moved = [n for n, t in weights["true"].items() if not torch.equal(t, teacher_weights.get(n, t))]
    assert moved  # training changed the student


def test_every_other_layer_student_starts_as_the_teachers_even_blocks(tmp_path, teacher):
    run, rows = teacher
    result = run_cli("train", student_recipe(tmp_path, run, rows), "train.lr=1e-12", f"output_dir={tmp_path / 's'}")
    assert result.exit_code == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and json.loads((run / "config.json").read_text())["num_hidden_layers"] == 2
    student, original = load_file(tmp_path / "s" / "model.safetensors"), load_file(run / "model.safetensors")
    assert not any(".layer.1." in name for name in student)
    for name, tensor in student.items():  # block 0 and the head as the teacher's (a learning rate of 1e-12)
        assert torch.allclose(tensor, original[name], atol=1e-6), name
    assert result.metrics["total_parameters"] < json.loads((run / "metrics.json").read_text())["total_parameters"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"labels": "[negative, positive]"},
            "task.teacher: its classes (0, 1) are not the student's (negative, positive)",
        ),
        ({"teacher": "./no/such/run"}, "task.teacher: no such folder: ./no/such/run"),
        ({"extra": "\n  alpha_cos: 1.0"}, "task.alpha_cos: the cosine loss reads the teacher's hidden states"),
        (
            {"extra": "\n  alpha_ce: 0\n  alpha_label: 0"},
            "task.alpha_ce: alpha_ce, alpha_label and alpha_cos are all 0",
        ),
    ],
)
def test_distillation_mistakes_are_one_line(change, expected, tmp_path, teacher, capsys):
    run, rows = teacher
    recipe = student_recipe(tmp_path, run, rows, change.get("extra", ""), change.get("labels", "['0', '1']"))
    overrides = [f"task.teacher={change['teacher']}", f"model.name={change['teacher']}"] if "teacher" in change else []
    result = run_cli("train", recipe, *overrides, f"output_dir={tmp_path / 'x'}")
    err = capsys.readouterr().err
    assert result.exit_code == 2 and expected in err and "Traceback" not in err, err


def test_cosine_term_runs_beside_a_live_teacher(tmp_path, teacher):
    run, rows = teacher
    extra = "\n  alpha_cos: 1.0\n  cache_teacher: false"
    result = run_cli("train", student_recipe(tmp_path, run, rows, extra), f"output_dir={tmp_path / 'c'}")
    assert result.exit_code == 0 and 0 <= result.metrics["accuracy"] <= 1


STUDENTS = {  # the task section, for each task type
    "regression": "{type: regression, text_a: sentence1, text_b: sentence2, label: score}",
    "similarity": "{type: similarity, text_a: '#1 String', text_b: '#2 String', label: Quality}",
    "entailment": "{type: entailment, text_a: sentence1, text_b: sentence2, label: label}",
    "multiple_choice": "{type: multiple_choice, context: premise, choices: [choice1, choice2], label: label}",
}


@pytest.mark.parametrize("kind", list(STUDENTS))
def test_every_predicting_task_type_distils(kind, tmp_path, tiny_bert):
    from conftest import GLUE, SHARED_DATA, sample_file

    source = {
        "regression": GLUE / "stsb" / "train.tsv",
        "similarity": GLUE / "mrpc" / "train.tsv",
        "entailment": GLUE / "rte" / "train.tsv",
        "multiple_choice": SHARED_DATA / "choice" / "copa" / "train.jsonl",
    }[kind]
    rows = sample_file(tmp_path, source, 33)
    reader = ", reader: {quoting: none}" if rows.suffix == ".tsv" else ""
    data = f"data: {{files: {{train: {rows}, validation: {rows}}}, max_length: 64{reader}}}"
    teacher = recipe_file(
        tmp_path,
        f"model: {tiny_bert}\ntask: {STUDENTS[kind]}\n{data}\ntrain: {{max_steps: 2, batch_size: 8}}\n",
        "teacher.yaml",
    )
    assert run_cli("train", teacher, f"output_dir={tmp_path / 'teacher'}").exit_code == 0
    student = recipe_file(
        tmp_path,
        f"""
model: {{name: {tmp_path / "teacher"}, init_from_teacher: every_other_layer}}
task: {{type: distillation, teacher: {tmp_path / "teacher"}, student: {STUDENTS[kind]}}}
{data}
train: {{max_steps: 2, batch_size: 8}}
""",
        "student.yaml",
    )
    result = run_cli("train", student, f"output_dir={tmp_path / 'student'}")
    assert result.exit_code == 0
    log = [json.loads(line) for line in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(entry["loss"]) for entry in log if "loss" in entry)


def test_a_teacher_with_only_pickled_weights_is_refused(tmp_path, teacher, tiny_bert, capsys):
    """The teacher loads from safetensors only, as the student does: a pickle can run code when loaded."""
    from safetensors.torch import load_file

    run, rows = teacher
    pickled = tmp_path / "pickled-teacher"
    pickled.mkdir()
    for item in run.iterdir():
        if item.is_file() and item.name not in ("model.safetensors", "recipe.yaml"):
            (pickled / item.name).write_bytes(item.read_bytes())
    torch.save(load_file(run / "model.safetensors"), pickled / "pytorch_model.bin")
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task:
  type: distillation
  teacher: {pickled}
  student: {{type: classification, text_a: sentence, label: label, labels: ['0', '1']}}
data: {{files: {{train: {rows}, validation: {rows}}}, reader: {{quoting: none}}}}
train: {{max_steps: 2, batch_size: 8}}
""",
        "distil.yaml",  # not recipe.yaml: the teacher's folder must not look like a run's
    )
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 2
    assert f"error: task.teacher: cannot load {pickled}:" in capsys.readouterr().err
