"""Packaged GGUF checkpoints (`packaged:` names) made into plain ones, once: the dequantised weights, in fp32.

A model loaded from GGUF stays flagged as quantized, and `save_pretrained` and training refuse it. So
the model is rebuilt from its config without the quantization config, given the dequantised weights,
and saved with its tokenizer as an ordinary checkpoint folder; later runs load that folder directly.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.mirrors import ResolvedModel, converted_dir

log = logging.getLogger(__name__)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Write a plain checkpoint (config, safetensors, tokenizer) equal to the GGUF file's dequantised model."""
    folder, name = gguf_file.parent, gguf_file.name
    log.info("dequantising %s into a plain fp32 checkpoint at %s (once)", gguf_file.name, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    dequantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config = copy.deepcopy(dequantised.config)  # reading the file's metadata again takes seconds
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantised.state_dict())
    model.generation_config = dequantised.generation_config
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def local_checkpoint(resolved: ResolvedModel) -> str:
    """A folder or Hub id that transformers can load: converts a packaged GGUF file on first use."""
    if resolved.origin != "gguf":
        return resolved.location
    return str(convert_gguf(Path(resolved.location), converted_dir(resolved.name)))
