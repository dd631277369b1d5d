"""LoRA and 4/8-bit bases: adapters that save, reload exactly, merge, carry a model card and push to a Hub
stand-in on a loopback port; tiny models built from configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import GLUE, recipe_file, run_cli, sample_file
from hub_server import HubStandIn
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune.loaded_run import load_run
from finetune.mirrors import resolve_model
from finetune.model import build_model
from finetune.tasks import build_task

TOKEN = "hf_testtoken_0123456789abcdef"


def lora_recipe(tmp_path, model, rows, extra="", name="recipe.yaml", epochs=20):
    return recipe_file(
        tmp_path,
        f"""
model: {model}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive]}}
data: {{files: {{train: {rows}, fit: {rows}}}, eval_split: fit, max_length: 64, reader: {{quoting: none}}}}
train: {{epochs: {epochs}, batch_size: 8, lr: 5.0e-3, warmup: 0, save_every: epoch}}
peft: {{r: 4}}
{extra}
""",
        name,
    )


def logits_of(model, run_dir, rows):
    """The model's logits on the run's evaluation rows, formatted by the recipe's task, one batch."""
    from finetune import data
    from finetune.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    task = build_task(recipe.task, recipe.task.labels)
    raw = data.load_raw(recipe.data, {"eval": recipe.data.eval_split})
    features = data.tokenize(raw, task, tokenizer, 64)["eval"]
    batch = task.collator(tokenizer, None)([features[i] for i in range(len(features))])
    labels = batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits, labels


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert):
    """A LoRA run on a tiny BERT over 32 real SST-2 rows."""
    folder = tmp_path_factory.mktemp("lora")
    rows = sample_file(folder, GLUE / "sst2" / "train.tsv", 33)
    result = run_cli("train", lora_recipe(folder, tiny_bert, rows), f"output_dir={folder / 'run'}")
    return folder / "run", result.metrics


def test_lora_run_folder_holds_the_adapter_and_reloads_exactly(lora_run, tiny_bert):
    run_dir, metrics = lora_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "recipe.yaml", "README.md"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "model.safetensors").exists()  # no full copy of the base
    assert metrics["accuracy"] >= 0.8
    assert 0 < metrics["trainable_share"] < 0.05 and metrics["trainable_parameters"] < metrics["total_parameters"]
    assert metrics["adapter_size_mb"] == pytest.approx(
        (run_dir / "adapter_model.safetensors").stat().st_size / 2**20, abs=1e-3
    )
    # the library's own loader on the base reproduces the run's evaluation exactly (the head came with the adapter)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    logits, labels = logits_of(PeftModel.from_pretrained(base, run_dir), run_dir, None)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert accuracy == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert loss == pytest.approx(metrics["eval_loss"], abs=1e-5)
    assert run_cli("eval", run_dir).metrics == {"accuracy": metrics["accuracy"], "eval_loss": metrics["eval_loss"]}
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert (checkpoint / "adapter_model.safetensors").is_file()


def test_an_adapter_run_named_as_a_model_is_one_line(lora_run, tmp_path, capsys):
    """A later recipe (a language model's continuation, a teacher's student) naming an adapter run as its model."""
    run_dir, _ = lora_run
    recipe = recipe_file(
        tmp_path,
        f"model: {run_dir}\ntask: {{type: classification, text_a: sentence}}\n"
        f"data: {{files: {{train: {run_dir / 'recipe.yaml'}, validation: {run_dir / 'recipe.yaml'}}}, format: csv}}\n",
    )
    assert run_cli("validate", recipe).exit_code == 2
    assert "holds a LoRA adapter, not a whole model; merge it first" in capsys.readouterr().err


def test_merge_writes_a_full_model_that_predicts_as_the_adapter(lora_run, tmp_path):
    run_dir, metrics = lora_run
    assert run_cli("merge", run_dir, tmp_path / "merged").exit_code == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    adapter = load_run(run_dir).model
    merged_logits, _ = logits_of(merged, run_dir, None)
    adapter_logits, _ = logits_of(adapter, run_dir, None)
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-5)  # fp32: the same function
    assert run_cli("eval", tmp_path / "merged").metrics["accuracy"] == metrics["accuracy"]
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "library_name: transformers" in card and "Merged from the adapter run" in card


def test_model_card_carries_hub_metadata_results_and_the_recipe(lora_run, tiny_bert):
    run_dir, metrics = lora_run
    text = (run_dir / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert "base_model" not in header and header["library_name"] == "peft"  # a local base has no Hub id
    assert f"`{tiny_bert}`" in text
    assert {"finetune", "classification", "lora"} <= set(header["tags"])
    [result] = header["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "accuracy", "value": metrics["accuracy"]}]
    assert f"| trainable_share | {metrics['trainable_share']} |" in text
    assert "PeftModel.from_pretrained(base" in text and "peft:\n  method: lora" in text


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_base_trains_lora_and_keeps_the_head_in_full_precision(bits, tmp_path, tiny_bert_64):
    import bitsandbytes as bnb

    rows = sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 33)
    recipe = lora_recipe(tmp_path, tiny_bert_64, rows, f"quantize: {{bits: {bits}}}")
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    assert result.metrics["accuracy"] >= 0.8
    run = load_run(tmp_path / "run")
    layers = dict(run.model.named_modules())
    kind = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    assert isinstance(layers["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer"], kind)
    assert type(layers["base_model.model.classifier.modules_to_save.default"]) is torch.nn.Linear
    # the reloaded adapter on a freshly quantised base scores as the run did
    again = run_cli("eval", tmp_path / "run").metrics
    assert again["accuracy"] == result.metrics["accuracy"]
    assert again["eval_loss"] == pytest.approx(result.metrics["eval_loss"], abs=1e-3)
    assert run_cli("merge", tmp_path / "run", tmp_path / "merged").exit_code == 0  # dequantised
    merged = run_cli("eval", tmp_path / "merged").metrics
    assert merged["eval_loss"] == pytest.approx(result.metrics["eval_loss"], abs=0.05)


def test_decoder_lora_trains_the_head_and_only_the_added_token_rows(tmp_path, tiny_llama):
    rows = sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 33)
    result = run_cli("train", lora_recipe(tmp_path, tiny_llama, rows), f"output_dir={tmp_path / 'run'}")
    assert result.metrics["accuracy"] >= 0.9
    run = load_run(tmp_path / "run")
    built = build_model(run.recipe, resolve_model(str(tiny_llama)), run.task, run.tokenizer)
    trained = {name for name, p in built.named_parameters() if p.requires_grad}
    assert trained and all(
        ".lora_" in name or "trainable_tokens_delta" in name or name.startswith("head.") for name in trained
    )
    assert {"head.weight", "head.bias"} <= trained and any("trainable_tokens_delta" in name for name in trained)
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert saved["trainable_token_indices"] == list(run.task.gpt1_ids.values())
    assert (tmp_path / "run" / "extract_head.safetensors").is_file()
    assert run_cli("eval", tmp_path / "run").metrics["accuracy"] == result.metrics["accuracy"]


def test_push_uploads_the_adapter_and_card_and_never_shows_the_token(lora_run, tmp_path):
    run_dir, _ = lora_run
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    with HubStandIn() as hub:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf"))
        done = subprocess.run(
            [sys.executable, "-m", "finetune", "push", str(run_dir), "--repo", "someone/sst2-lora", "--private"],
            capture_output=True,
            text=True,
            env=env,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    [repo] = hub.recorded.repos
    assert repo["name"] == "sst2-lora" and repo["organization"] == "someone" and repo["visibility"] == "private"
    uploaded = set(hub.recorded.files)
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
        "recipe.yaml",
        "tokenizer.json",
    } <= uploaded
    assert not any(p.startswith(("checkpoints/", "best/")) for p in uploaded)
    assert {p.split("/")[0] for p in uploaded} <= {p.name for p in run_dir.iterdir()}
    assert any(p.startswith("tensorboard/events.out.tfevents") for p in uploaded)  # the Hub's Training metrics tab
    assert 'PeftModel.from_pretrained(base, "someone/sst2-lora")' in hub.recorded.files["README.md"].decode()
    writes = [r for r in hub.recorded.requests if r["path"].startswith(("/api/repos/create", "/api/models/"))]
    assert len(writes) >= 3 and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in writes)
    assert TOKEN not in done.stdout + done.stderr
    assert not any(TOKEN.encode() in content for content in hub.recorded.files.values())
    assert not any(TOKEN.encode() in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())


def test_push_merge_and_targets_fail_clearly(lora_run, tmp_path, tiny_bert, capsys, monkeypatch):
    run_dir, _ = lora_run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    assert run_cli("push", run_dir, "--repo", "someone/x").exit_code == 2
    assert "push: no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert run_cli("push", run_dir, "--repo", "noslash").exit_code == 2
    assert "error: --repo: 'noslash' is not a repository id such as you/sst2-minilm-lora" in capsys.readouterr().err
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the upload fails
    card = (run_dir / "README.md").read_bytes()
    assert run_cli("push", run_dir, "--repo", "someone/x").exit_code == 2
    err = capsys.readouterr().err
    assert "error: push: " in err and TOKEN not in err and "Traceback" not in err
    assert (run_dir / "README.md").read_bytes() == card  # a failed push leaves the run's card as it was
    monkeypatch.delenv("HF_TOKEN")

    full = tmp_path / "full"
    (full).mkdir()
    (full / "recipe.yaml").write_text((run_dir / "recipe.yaml").read_text())
    assert run_cli("merge", full, tmp_path / "out").exit_code == 2
    assert "no adapter here" in capsys.readouterr().err

    rows = sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 9)
    recipe = lora_recipe(tmp_path, tiny_bert, rows, "", "bad.yaml")
    result = run_cli("train", recipe, "peft.target_modules=[query, q_proj]", f"output_dir={tmp_path / 'bad'}")
    assert result.exit_code == 2 and not (tmp_path / "bad").exists()
    err = capsys.readouterr().err
    assert "peft.target_modules: q_proj match no layer of BertForSequenceClassification" in err and "query" in err


def test_quantization_mistakes_are_caught_before_weights_load(tmp_path, tiny_bert, capsys):
    rows = sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 9)
    recipe = lora_recipe(tmp_path, tiny_bert, rows, "quantize: {bits: 4}")
    assert run_cli("validate", recipe).exit_code == 2
    assert "quantize.bits: 4-bit layers need widths divisible by 64" in capsys.readouterr().err
    assert run_cli("validate", recipe, "--set", "peft=null").exit_code == 2
    assert "quantize: a quantised base cannot be trained itself; add a peft section" in capsys.readouterr().err
    assert run_cli("validate", recipe, "--set", "quantize.bits=8", "--set", "quantize.quant_type=fp4").exit_code == 2
    assert "quantize.quant_type: fp4 is a 4-bit data type" in capsys.readouterr().err


def test_hub_push_in_the_recipe_pushes_at_the_end_of_training(tmp_path, tiny_bert, monkeypatch, capsys):
    """A planted token goes through training and a push, then a push the server refuses with a message quoting the
    token: it is sent in the Authorization header and appears nowhere else, not in the run folder, the card, the
    log, the output, the uploaded files or the error line."""
    import huggingface_hub.constants

    rows = sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 17)
    recipe = lora_recipe(tmp_path, tiny_bert, rows, "hub: {repo: someone/pushed, push: true}", epochs=1)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 0
    assert hub.recorded.repos[0]["name"] == "pushed" and "adapter_model.safetensors" in hub.recorded.files
    with HubStandIn(refuse_commits=True) as refusing:
        monkeypatch.setenv("HF_ENDPOINT", refusing.url)
        assert run_cli("train", recipe, f"output_dir={tmp_path / 'refused'}").exit_code == 2
    shown = capsys.readouterr()
    assert "error: push: " in shown.err and "cannot commit for Bearer ***" in shown.err
    assert TOKEN not in shown.out + shown.err
    assert any(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in refusing.recorded.requests)
    assert not any(TOKEN.encode() in content for content in hub.recorded.files.values())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"README.md", "log.jsonl", "recipe.yaml"} <= {p.name for p in written}
    assert not any(TOKEN.encode() in p.read_bytes() for p in written)


def test_a_traceback_never_shows_a_token(monkeypatch, capsys):
    from finetune.cli import _redacted_traceback

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        raise RuntimeError(f"a library put the header in its message: Bearer {TOKEN}")
    except RuntimeError as exc:
        _redacted_traceback(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "Bearer ***" in err and TOKEN not in err


def test_a_4bit_adapter_run_resumes_to_the_same_adapter(tmp_path, tiny_bert_64, monkeypatch):
    from safetensors.torch import load_file

    from finetune import engine as engine_module

    rows = sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 17)  # 2 steps an epoch; a checkpoint each epoch
    recipe = lora_recipe(tmp_path, tiny_bert_64, rows, "quantize: {bits: 4}", epochs=3)
    full = run_cli("train", recipe, f"output_dir={tmp_path / 'full'}")
    original = engine_module.Engine._after_step

    def crash_after_step_3(self, window, bar):
        original(self, window, bar)
        if self.state.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_module.Engine, "_after_step", crash_after_step_3)
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'cut'}").exit_code == 130
    monkeypatch.setattr(engine_module.Engine, "_after_step", original)
    resumed = run_cli("train", recipe, f"output_dir={tmp_path / 'cut'}", "--resume")
    assert resumed.metrics["eval_loss"] == full.metrics["eval_loss"]
    weights = [load_file(tmp_path / run / "adapter_model.safetensors") for run in ("full", "cut")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def _lora_llama(dropout: float):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    # init_lora_weights=False: B starts non-zero, so A's gradients (where the dropout enters) are not all zero
    lora = LoraConfig(r=4, lora_dropout=dropout, init_lora_weights=False, target_modules="all-linear")
    return get_peft_model(LlamaForCausalLM(config), lora)


def _step(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, LoRA gradients and the bytes autograd saves for backward (each storage once, parameters not
    counted: they are held anyway), with seed 5."""
    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    model.train()
    model.zero_grad()
    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, sum(saved.values())


def test_fused_lora_dropout_is_peft_dropout_with_a_one_byte_mask():
    """Fused, LoRA's dropout gives peft's loss and gradients bit for bit (the same draws on a CPU), and backward
    keeps what it keeps without dropout plus one bool mask per adapted projection's input: not the dropped copies."""
    from finetune.lora_dropout import DroppedLinear, fuse_lora_dropout

    ids = torch.randint(0, 64, (2, 12))
    peft_loss, peft_grads, peft_bytes = _step(_lora_llama(0.2), ids)
    fused = _lora_llama(0.2)
    assert fuse_lora_dropout(fused) == 14  # 7 projections x 2 layers
    loss, grads, fused_bytes = _step(fused, ids)
    assert torch.equal(loss, peft_loss)
    assert peft_grads.keys() == grads.keys() and all(torch.equal(peft_grads[n], g) for n, g in grads.items())
    _, _, plain_bytes = _step(_lora_llama(0.0), ids)
    masks = sum(2 * 12 * m.in_features for m in fused.modules() if isinstance(m, DroppedLinear))  # bool: 1 byte
    assert fused_bytes == plain_bytes + masks
    assert peft_bytes > fused_bytes + 4 * masks  # peft keeps at least a float copy of each dropped input
    fused.eval()
    with torch.no_grad():  # no dropout in evaluation
        assert torch.equal(fused(input_ids=ids).logits, fused(input_ids=ids).logits)
