"""Invariances of whole runs (tests/cases.py): a run interrupted and resumed ends as the uninterrupted run does, bit
for bit, with dropout on, for every task type on the families that run it; a LoRA run's adapter, reloaded or
merged into its base, predicts as the model did at the end of training."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from cases import BY_NAME, CASES, STREAMED, Case, train, weights
from conftest import run_cli
from peft.tuners.lora import LoraLayer

from finetune.engine import Engine
from finetune.loaded_run import load_run
from finetune.rundir import checkpoint_dirs

# wall-clock and memory readings, which no two runs share
TIMING = {
    "train_runtime_s",
    "train_samples_per_second",
    "train_tokens_per_second",
    "data_seconds",
    "peak_rss_mb",
    "peak_gpu_memory_mb",
}
SAME_FUNCTION = 1e-5  # logits of one function computed two ways in fp32 (merged weights round differently)


def resumable(case: Case, folder: Path, model: Path) -> dict[str, Any]:
    """10 rows in micro-batches of 2, 2 to a step: 3 steps an epoch (the third ragged), 2 epochs, an evaluation
    and a checkpoint every 2 steps; the run ends with the last step's weights, never with a `best/` copy that
    may have been saved before an interruption."""
    settings = {"eval_every": 2, "save_every": 2, "select_best": False, "log_every": 1}
    return case.recipe(folder, model, batch_size=2, grad_accum=2, epochs=2, **settings)


def crashing(original: Callable, when: Callable[..., bool]) -> Callable:
    """`original`, after which the process dies (KeyboardInterrupt) on the call for which `when` holds."""

    def call_then_die(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            raise KeyboardInterrupt
        return result

    return call_then_die


def log_records(run_dir: Path) -> list[dict[str, Any]]:
    """log.jsonl without its throughput readings."""
    records = map(json.loads, (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines())
    return [{k: v for k, v in r.items() if k not in ("samples_per_second", "tokens_per_second")} for r in records]


@pytest.mark.parametrize("case", CASES + STREAMED, ids=lambda c: c.name)
def test_twice_resumed_run_equals_the_uninterrupted_run(case, request, tmp_path, monkeypatch):
    """The run dies while writing step 4's checkpoint (in epoch 1): `--resume` starts from step 2's, in the middle
    of epoch 0; it dies again after step 5, and the second resume starts from step 4's, in the middle of epoch 1.
    Weights, metrics and every logged loss and evaluation equal those of the run never interrupted (the data order,
    dropout masks, optimizer, schedule and best step continue where they stopped), and nothing is logged twice."""
    model = request.getfixturevalue(case.model)
    full = train(resumable(case, tmp_path, model))
    recipe = resumable(case, tmp_path, model)
    run_dir, path = Path(recipe["output_dir"]), tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        writing_4 = crashing(Accelerator.save_state, lambda _, folder, **__: Path(folder).name == ".tmp-step-4")
        patch.setattr(Accelerator, "save_state", writing_4)
        train(recipe)
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-2"]
    assert (run_dir / "checkpoints" / ".tmp-step-4").is_dir()  # the accelerator's state written, nothing else
    with monkeypatch.context() as patch:
        after_5 = crashing(Engine._after_step, lambda engine, *_: engine.state.global_step == 5)
        patch.setattr(Engine, "_after_step", after_5)
        assert run_cli("train", path, "--resume").exit_code == 130  # the CLI's Ctrl-C outside the loop
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-4"]
    resumed = run_cli("train", path, "--resume")

    a, b = weights(full.run_dir), weights(run_dir)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert {k: v for k, v in resumed.metrics.items() if k not in TIMING} == {
        k: v for k, v in full.metrics.items() if k not in TIMING
    }
    assert log_records(run_dir) == log_records(full.run_dir)  # steps 1 to 6 once each, with the same losses


@pytest.mark.parametrize("name", ["classification-encoder", "classification-decoder-aux", "seq2seq-encoder-decoder"])
def test_adapter_reloaded_and_merged_predicts_as_the_trained_model(name, request, tmp_path, monkeypatch):
    """LoRA on an encoder's classifier, on GPT-2 with GPT-1's head and auxiliary LM loss, and on T5 writing text:
    the task's logits on an evaluation batch at the end of training, in memory, equal those of the run folder
    loaded back (`load_run`) and of the model `finetune merge` writes, loaded back."""
    case = BY_NAME[name]
    recipe = case.recipe(tmp_path, request.getfixturevalue(case.model), epochs=3, lr=0.05)
    recipe["peft"] = {"r": 4}
    trained = {}
    save_final = Engine.save_final

    def predict_then_save(self: Engine) -> dict[str, float]:
        trained["batch"] = next(iter(self.eval_loader))
        trained["logits"] = logits(self.accelerator.unwrap_model(self.model), self.steps.forward, trained["batch"])
        return save_final(self)

    monkeypatch.setattr(Engine, "save_final", predict_then_save)
    run_dir = train(recipe).run_dir
    assert run_cli("merge", run_dir, tmp_path / "merged").exit_code == 0
    batch, expected = trained["batch"], trained["logits"]
    reloaded, merged = load_run(run_dir), load_run(tmp_path / "merged")

    with without_lora(reloaded.model):  # the adapter's own update moves the logits far more than the tolerance
        assert (logits(reloaded.model, reloaded.task.forward, batch) - expected).abs().max() > 1000 * SAME_FUNCTION
    assert (logits(reloaded.model, reloaded.task.forward, batch) - expected).abs().max() <= SAME_FUNCTION
    assert (logits(merged.model, merged.task.forward, batch) - expected).abs().max() <= SAME_FUNCTION
    assert not any(isinstance(m, LoraLayer) for m in merged.model.modules())


def logits(model: torch.nn.Module, forward: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The task's logits for a batch, the model in evaluation mode (no dropout)."""
    with torch.no_grad():
        return forward(model.eval(), batch)[1]


@contextmanager
def without_lora(model: torch.nn.Module) -> Iterator[None]:
    """The model with its LoRA layers passing their base layers' outputs (the trained head and tokens kept)."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    for layer in layers:
        layer.enable_adapters(False)
    yield
    for layer in layers:
        layer.enable_adapters(True)
