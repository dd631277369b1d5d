"""Speed and memory switches of a recipe: each does what it says, and the defaults keep the results exact."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_training import tiny_recipe


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_weights_train_in_the_recipes_dtype_whatever_the_checkpoint_holds(tmp_path, tiny_bert, sst2_rows):
    """transformers 5 loads a checkpoint in its stored dtype; a bf16 checkpoint must still train in fp32 unless the
    recipe says model.dtype: bf16 (then the weights are bf16 in memory and on disk)."""
    from transformers import AutoModel

    stored = tmp_path / "bf16-checkpoint"
    AutoModel.from_pretrained(tiny_bert).to(torch.bfloat16).save_pretrained(stored)
    for name in ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (tiny_bert / name).is_file():
            shutil.copy(tiny_bert / name, stored / name)
    recipe = tiny_recipe(tmp_path, stored, sst2_rows, epochs=1)
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'fp32'}").exit_code == 0
    assert run_cli("train", recipe, "model.dtype=bf16", f"output_dir={tmp_path / 'bf16'}").exit_code == 0
    assert {t.dtype for t in load_file(tmp_path / "fp32" / "model.safetensors").values()} == {torch.float32}
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}


def test_schedules_follow_their_formulas(tmp_path, tiny_bert, sst2_rows):
    """2 warmup steps of 8, then linear, cosine or constant; the logged lr of every step is the formula's."""
    peak, warmup, total = 1e-3, 2, 8
    expected = {
        "linear": lambda s: peak * (total - s) / (total - warmup),
        "cosine": lambda s: peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
        "constant": lambda s: peak,
    }
    for name, formula in expected.items():
        run = tmp_path / name
        recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, max_steps=total, warmup=warmup, log_every=1)
        assert run_cli("train", recipe, f"train.schedule={name}", f"output_dir={run}").exit_code == 0
        logged = {r["step"]: r["lr"] for r in _log(run) if "lr" in r}
        # the lr logged after step s is the one step s + 1 uses: warmup rises to the peak, then the schedule
        for step, lr in logged.items():
            want = peak * step / warmup if step < warmup else formula(step)
            assert math.isclose(lr, want, rel_tol=1e-9, abs_tol=1e-12), (name, step, lr, want)


def test_8bit_adamw_keeps_8bit_states_and_trains(tmp_path, tiny_bert, sst2_rows):
    """bitsandbytes' AdamW8bit (on CPU here): the moments of its large tensors are uint8 in the checkpoint, and it
    learns."""
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, save_every=40)  # 30 epochs, as the overfit test
    assert run_cli("train", recipe, "train.optimizer=adamw_8bit", f"output_dir={run}").exit_code == 0
    state = torch.load(next((run / "checkpoints").glob("step-*")) / "optimizer.bin", weights_only=False)["state"]
    quantized = [v["__bnb_optimizer_quant_state__"] for v in state.values() if "__bnb_optimizer_quant_state__" in v]
    largest = max(quantized, key=lambda q: q["state1"].numel())  # the word embeddings (small tensors stay fp32)
    assert largest["state1"].dtype == largest["state2"].dtype == torch.uint8
    losses = [r["loss"] for r in _log(run) if "loss" in r]
    assert losses[-1] < losses[0] / 4


def test_attention_implementations_give_the_same_run(tmp_path, tiny_bert, sst2_rows, monkeypatch):
    """eager and sdpa each run (sdpa's kernel is called only under sdpa) and train the same weights."""
    calls, sdpa_kernel = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa_kernel(*a, **kw)
    )
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    for kernel in ("eager", "sdpa"):
        calls.clear()
        args = (recipe, f"model.attn_implementation={kernel}", f"output_dir={tmp_path / kernel}")
        assert run_cli("train", *args).exit_code == 0
        assert bool(calls) == (kernel == "sdpa"), kernel
    eager, sdpa = (
        load_file(tmp_path / "eager" / "model.safetensors"),
        load_file(tmp_path / "sdpa" / "model.safetensors"),
    )
    assert max(float((eager[k] - sdpa[k]).abs().max()) for k in eager) < 1e-5
    initial = load_file(tiny_bert / "model.safetensors")
    trained = {k.removeprefix("bert."): v for k, v in eager.items()}
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial if k in trained) > 1e-3  # it trained


def test_compiled_model_trains_and_saves_as_the_plain_one(tmp_path, tiny_bert, sst2_rows, monkeypatch):
    """train.compile: the step runs through torch.compile's wrapper (here its eager backend: the graph capture
    without minutes of kernel generation) and the run folder holds the plain model, trained alike."""
    import finetune.engine

    compiled, original = [], torch.compile

    def compile_eagerly(call, **settings):
        compiled.append(settings)
        return original(call, backend="eager", **settings)

    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'plain'}").exit_code == 0
    monkeypatch.setattr(finetune.engine.torch, "compile", compile_eagerly)
    assert run_cli("train", recipe, "train.compile=true", f"output_dir={tmp_path / 'compiled'}").exit_code == 0
    assert compiled == [{"dynamic": True}]
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    trained = load_file(tmp_path / "compiled" / "model.safetensors")
    assert plain.keys() == trained.keys()  # no wrapper's prefix in the names
    assert max(float((plain[k] - trained[k]).abs().max()) for k in plain) < 1e-5


def test_precision_auto_is_settled_by_the_hardware_and_recorded(tmp_path, tiny_bert, sst2_rows, monkeypatch):
    """train.precision: auto trains in bf16 where the hardware has native bf16 and in fp32 where it has not; the
    run's recipe.yaml and log name what ran."""
    import yaml

    from finetune import accelerator

    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, max_steps=2)
    seen = []
    made = accelerator.Accelerator
    monkeypatch.setattr(accelerator, "Accelerator", lambda **kw: seen.append(kw["mixed_precision"]) or made(**kw))
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(accelerator, "native_bf16", lambda native=native: native)
        run = tmp_path / want
        assert run_cli("train", recipe, "train.precision=auto", f"output_dir={run}").exit_code == 0
        assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["precision"] == want
        assert seen.pop() == accelerator.MIXED_PRECISION[want]


def test_native_bf16_reads_the_cpu_flags(tmp_path, monkeypatch):
    """On a CPU machine the answer is the AVX512-BF16 or AMX-BF16 flag, not torch's bf16 check (which emulation
    passes)."""
    from finetune import accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(accelerator, "Path", lambda _: cpuinfo)
    for flags, want in (("avx512f avx512bw avx512_vnni", False), ("avx512bw avx512_bf16", True), ("amx_bf16", True)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        assert accelerator.native_bf16() is want, flags
