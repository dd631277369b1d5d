"""Checkpoints without network: the packaged SmolLM2 GGUF file becomes a plain checkpoint that generates the same."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.gguf_models import local_checkpoint
from finetune.mirrors import resolve_model
from finetune.validate import check

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_packaged_gguf_converts_once_into_a_plain_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    resolved = resolve_model(SMOLLM2)
    assert resolved.origin == "gguf" and resolved.location.endswith(".gguf")
    folder = local_checkpoint(resolved)
    assert resolve_model(SMOLLM2).origin == "package" and resolve_model(SMOLLM2).location == folder
    assert "quantization_config" not in json.loads((tmp_path / "models" / SMOLLM2 / "config.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    plain = AutoModelForCausalLM.from_pretrained(folder)
    gguf_path = resolved.location
    reference = AutoModelForCausalLM.from_pretrained(gguf_path.rsplit("/", 1)[0], gguf_file=gguf_path.rsplit("/", 1)[1])
    with torch.no_grad():
        ours = plain.generate(**prompt, max_new_tokens=8, do_sample=False)
        theirs = reference.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert ours.tolist() == theirs.tolist()


def test_validate_knows_the_packaged_decoder_without_converting(tmp_path, monkeypatch):
    from conftest import REPO

    from finetune.recipe import load_recipe

    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    report = check(load_recipe(REPO / "recipes/glue/sst2-minilm.yaml", [f"model={SMOLLM2}"]))
    assert report.family == "decoder"
    assert any("ships as GGUF" in note for note in report.notes)
    assert not (tmp_path / "models").exists()
