"""Architecture families, read from a checkpoint's config without loading its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError

DECODER_TYPES = {
    "gpt2",
    "openai-gpt",
    "gpt_neo",
    "gpt_neox",
    "gptj",
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "phi",
    "phi3",
    "gemma",
    "gemma2",
    "opt",
    "bloom",
    "falcon",
    "smollm3",
    "olmo",
    "olmo2",
}
# Decoders that keep examples packed into one row apart: given restarting position ids and no attention mask, their
# attention is block-diagonal (tests/test_packing.py proves it for each, and that openai-gpt, OPT and Bloom mix).
PACKING_ISOLATED = DECODER_TYPES - {"openai-gpt", "opt", "bloom"}
ENCODER_DECODER_TYPES = {"t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "led", "longt5"}
# Encoder-decoders whose papers classify with a head on the final decoder state; the rest (T5 and its kin) are
# text to text and write the class word.
CLASSIFIER_ENCODER_DECODERS = {"bart", "mbart", "led"}


def read_config(location: str | Path) -> dict[str, Any]:
    """A local checkpoint's config.json as a dict."""
    path = Path(location) / "config.json"
    if not path.is_file() and (Path(location) / "adapter_config.json").is_file():
        raise FinetuneError(
            f"model.name: {location} holds a LoRA adapter, not a whole model; merge it first (finetune merge) and "
            "name the merged folder"
        )
    if not path.is_file():
        raise FinetuneError(f"model.name: no config.json in {location}; is it a save_pretrained folder?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FinetuneError(f"model.name: {path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise FinetuneError(f"model.name: {path} holds a JSON {type(config).__name__}, not a model config")
    return config


def detect_family(config: dict[str, Any]) -> str:
    """encoder, decoder or encoder-decoder, from the config's model_type and architectures."""
    model_type = config.get("model_type", "")
    architectures = config.get("architectures") or []
    if config.get("is_encoder_decoder") or model_type in ENCODER_DECODER_TYPES:
        return "encoder-decoder"
    if model_type in DECODER_TYPES or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    return "encoder"


def resolve_head(head: str, family: str, model_type: str | None, predicts_score: bool) -> str:
    """The head `task.head: auto` means: text_to_text for T5-style encoder-decoders predicting classes or
    candidates, classifier otherwise (scores always get a regression head)."""
    if head != "auto":
        return head
    if family == "encoder-decoder" and model_type not in CLASSIFIER_ENCODER_DECODERS and not predicts_score:
        return "text_to_text"
    return "classifier"
