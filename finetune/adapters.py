"""LoRA adapters (peft) and 4/8-bit bases (bitsandbytes): the configs, and the model wrapped for training.

The task head is trained in full and saved with the adapter (`modules_to_save`), and so are a decoder's added
GPT-1 token embeddings (`trainable_token_indices`: only those rows), or a fine-tuned classifier would be lost.
Heads and norms stay unquantised.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from finetune.errors import FinetuneError, first_line
from finetune.lora_dropout import fuse_lora_dropout
from finetune.recipe.schema import PeftSpec, QuantizeSpec

log = logging.getLogger(__name__)

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"

_BERT = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
_GPT = ["c_attn", "c_proj", "c_fc"]  # GPT-2 and openai-gpt: Conv1D layers, which peft handles
_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_T5 = ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]
# BART's classification head has an out_proj too: name the attention ones by their parents
_BART = ["q_proj", "k_proj", "v_proj", "self_attn.out_proj", "encoder_attn.out_proj", "fc1", "fc2"]
# Attention and MLP projections by model type; other architectures get peft's all-linear.
LORA_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(["bert", "electra", "roberta", "xlm-roberta", "camembert"], _BERT),
    **dict.fromkeys(["gpt2", "openai-gpt"], _GPT),
    **dict.fromkeys(
        ["llama", "mistral", "mixtral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2", "gemma", "gemma2"], _LLAMA
    ),
    **dict.fromkeys(["t5", "mt5", "umt5", "longt5"], _T5),
    **dict.fromkeys(["bart", "mbart"], _BART),
}
# Where transformers' task models keep their heads; kept out of quantisation (names absent from a model are ignored)
HEAD_NAMES = ("classifier", "classification_head", "score", "sequence_summary", "qa_outputs")


def quantization_config(spec: QuantizeSpec, precision: str, keep: list[str]) -> BitsAndBytesConfig:
    """BitsAndBytesConfig for the recipe; the modules in `keep` (heads) stay in full precision."""
    skip = [*keep, "lm_head"]  # a tied output layer must stay as the embeddings are
    if spec.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    dtype = spec.compute_dtype if spec.compute_dtype != "auto" else precision
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype],
        llm_int8_skip_modules=skip,
    )


def check_quantization_device() -> None:
    """bitsandbytes runs on CUDA GPUs and on CPUs, not on Apple's MPS."""
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        raise FinetuneError("quantize: bitsandbytes has no kernels for Apple's MPS; train without quantize there")


def head_modules(model: PreTrainedModel) -> list[str]:
    """The task head: the model's top-level modules with weights outside its pretrained body (classifier,
    classification_head, ...). A language model's own head is pretrained, so an LM has none."""
    if model.get_output_embeddings() is not None:
        return []
    body = model.base_model_prefix
    return [name for name, child in model.named_children() if name != body and any(True for _ in child.parameters())]


def add_lora(
    model: PreTrainedModel,
    spec: PeftSpec,
    model_type: str,
    quantized: bool,
    gradient_checkpointing: bool,
    trainable_tokens: list[int] | None = None,
    task_type: str | None = None,
) -> PeftModel:
    """The model with LoRA adapters: only the adapters, the head and `trainable_tokens` rows train. `task_type`
    (peft's CAUSAL_LM, SEQ_2_SEQ_LM) makes the adapter load with peft's classes for generation."""
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = lora_targets(model, spec, model_type)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias=spec.bias,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        modules_to_save=[*head_modules(model), *spec.modules_to_save] or None,
        trainable_token_indices=trainable_tokens or None,
        task_type=task_type,
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:  # e.g. modules_to_save naming a layer that also gets an adapter
        raise FinetuneError(f"peft: {first_line(exc)}") from None
    fuse_lora_dropout(model)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "LoRA r=%d on %s: %s of %s parameters train (%.2f%%)",
        spec.r,
        targets if isinstance(targets, str) else ", ".join(targets),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model


def lora_targets(model: nn.Module, spec: PeftSpec, model_type: str) -> list[str] | str:
    """The recipe's target modules, each checked to match a layer; else the architecture's default."""
    layers = [name for name, module in model.named_modules() if _is_linear(module)]
    if spec.target_modules is None:
        default = LORA_TARGETS.get(model_type)
        found = [t for t in default if _matches(t, layers)] if default else []
        return found or "all-linear"
    missing = [t for t in spec.target_modules if not _matches(t, layers)]
    if missing:
        endings = sorted({name.split(".")[-1] for name in layers})
        raise FinetuneError(
            f"peft.target_modules: {', '.join(missing)} match no layer of {type(model).__name__}; "
            f"its linear layers end in: {', '.join(endings)}"
        )
    return list(spec.target_modules)


def _matches(target: str, names: list[str]) -> bool:
    return any(name == target or name.endswith(f".{target}") for name in names)


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear8bitLt and Linear4bit subclass nn.Linear
    return isinstance(module, nn.Linear | Conv1D)


def is_adapter_dir(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()
