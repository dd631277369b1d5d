"""Model: the tokenizer and the backbone with its task head, from a local folder, a mirror or the Hub."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from finetune.adapters import HEAD_NAMES, add_lora, quantization_config
from finetune.errors import FinetuneError, first_line
from finetune.families import detect_family
from finetune.gguf_models import local_checkpoint
from finetune.heads import HEAD_CONFIG, ExtractTokenModel
from finetune.mirrors import ResolvedModel
from finetune.recipe import Recipe
from finetune.recipe.schema import ModelSpec
from finetune.tasks import Task

if TYPE_CHECKING:
    from finetune.validate import Report

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# what loading a damaged or mismatched checkpoint raises: missing files, a truncated or empty safetensors file,
# tensors of another shape
LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)


def load_tokenizer(spec: ModelSpec, resolved: ResolvedModel) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            local_checkpoint(resolved), revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"model.name: cannot load a tokenizer from {spec.name}: {first_line(exc)}") from None
    return with_vocabulary(tokenizer, f"model.name: {spec.name}")


def with_vocabulary(tokenizer: PreTrainedTokenizerBase, where: str) -> PreTrainedTokenizerBase:
    """`tokenizer`, refused when it knows no token but its special ones: what transformers builds for a folder
    whose tokenizer files are missing, which would read every text as [UNK]."""
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_ids)):
        raise FinetuneError(
            f"{where} has no tokenizer files (its tokenizer knows only its {len(tokenizer.get_vocab())} special "
            "tokens, so every text would read as unknown); copy the checkpoint's tokenizer files beside its weights"
        )
    return tokenizer


def resolve_architecture(spec: ModelSpec, report: Report) -> tuple[str, str | None]:
    """The family and model type validation found or, for a Hub checkpoint it could not see, those of its config."""
    if report.architecture_known:
        return report.family, report.model_type
    try:
        config = AutoConfig.from_pretrained(
            local_checkpoint(report.model), revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"model.name: cannot load {spec.name}: {first_line(exc)}") from None
    return report.family or detect_family(config.to_dict()), config.model_type


def build_model(
    recipe: Recipe, resolved: ResolvedModel, task: Task, tokenizer: PreTrainedTokenizerBase | None = None
) -> torch.nn.Module:
    """The pretrained backbone with a fresh head sized for the task (class names stored as id2label),
    with LoRA adapters when the recipe has a peft section (on a 4/8-bit base with a quantize section).

    With GPT-1's tokens set on the task (decoders), the backbone is the causal LM itself, its embeddings
    resized for the added tokens, under `ExtractTokenModel`'s head.
    """
    model = load_backbone(recipe, resolved, task, tokenizer)
    if recipe.peft is not None:
        model = add_lora(
            model,
            recipe.peft,
            model.config.model_type,
            quantized=recipe.quantize is not None,
            gradient_checkpointing=recipe.train.gradient_checkpointing,
            trainable_tokens=list(task.gpt1_ids.values()) if task.gpt1_ids is not None else None,
            task_type=task.peft_task_type,
        )
        # what it trained on: a Hub id means the Hub's weights; a packaged: name or a path names anything else
        model.peft_config["default"].base_model_name_or_path = resolved.name
    if task.gpt1_ids is not None:
        model = ExtractTokenModel(
            model, task.num_labels, task.gpt1_ids["extract"], task.spec.aux_lm_weight, task.problem_type
        )
    return model


def load_backbone(
    recipe: Recipe, resolved: ResolvedModel, task: Task, tokenizer: PreTrainedTokenizerBase | None
) -> PreTrainedModel:
    """The transformers model for the task: pretrained (or fresh) weights, 4/8-bit when asked, GPT-1's tokens."""
    spec = recipe.model
    head = task.config_overrides
    quantization = None
    if recipe.quantize is not None:
        quantization = quantization_config(recipe.quantize, recipe.train.precision, keep=list(HEAD_NAMES))
    try:
        location = local_checkpoint(resolved)
        config = AutoConfig.from_pretrained(
            location, revision=spec.revision, trust_remote_code=spec.trust_remote_code, **head
        )
        model_class = AutoModelForCausalLM if task.gpt1_ids is not None else task.model_class
        # the weights' type is the recipe's (transformers would keep a checkpoint's own, often bf16)
        settings = {
            "dtype": DTYPES[spec.dtype],
            "trust_remote_code": spec.trust_remote_code,
            **attention(spec),
        }
        if spec.init == "random":
            model = model_class.from_config(config, **settings)
        else:
            model = model_class.from_pretrained(
                location,
                config=config,
                revision=spec.revision,
                quantization_config=quantization,
                use_safetensors=None if spec.allow_pickle else True,
                **settings,
            )
    except (*LOAD_ERRORS, ImportError) as exc:  # ImportError: a quantised base without bitsandbytes
        raise FinetuneError(f"model.name: cannot load {spec.name}: {first_line(exc)}") from None
    if spec.pretrained_layers is not None:
        reinitialize_blocks(model, keep=spec.pretrained_layers)
    if spec.init_from_teacher == "every_other_layer":
        keep_every_other_block(model)
    grown = tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings
    if task.gpt1_ids is not None or grown:  # the added [start] [delim] [extract], or a pad token
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if task.family == "decoder" and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    bits = f", {recipe.quantize.bits}-bit" if recipe.quantize else ""
    log.info(
        "model %s (%s, %s%s): %.1fM parameters",
        spec.name,
        config.model_type,
        resolved.about,
        bits,
        model.num_parameters() / 1e6,
    )
    return model


def attention(spec: ModelSpec) -> dict[str, str]:
    """The attention kernel the recipe asks for, as `from_pretrained` takes it (auto: transformers' choice)."""
    if spec.attn_implementation == "auto":
        return {}
    if spec.attn_implementation == "flash_attention_2" and not (
        torch.cuda.is_available() and importlib.util.find_spec("flash_attn")
    ):
        raise FinetuneError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package")
    return {"attn_implementation": spec.attn_implementation}


def transformer_blocks(
    model: PreTrainedModel, setting: str = "model.pretrained_layers"
) -> dict[str, torch.nn.ModuleList]:
    """The stacks of transformer blocks by name: an encoder-decoder's encoder and decoder (T5's encoder.block and
    decoder.block, BART's encoder.layers and decoder.layers), else the one stack (bert.encoder.layer,
    transformer.h, model.layers, ...). Not found: an error naming the recipe `setting` that needs them."""
    if model.config.is_encoder_decoder:  # each stack's first list of modules is its blocks
        stacks, depth = {"encoder": model.get_encoder(), "decoder": model.get_decoder()}, None
    else:  # the first list as long as the model is deep
        stacks, depth = {"transformer": model}, model.config.num_hidden_layers
    found = {
        name: next((m for m in stack.modules() if isinstance(m, torch.nn.ModuleList) and depth in (None, len(m))), None)
        for name, stack in stacks.items()
    }
    missing = [name for name, blocks in found.items() if blocks is None]
    if missing:
        raise FinetuneError(f"{setting}: cannot find the {' and '.join(missing)} blocks of {type(model).__name__}")
    return found


def reinitialize_blocks(model: PreTrainedModel, keep: int) -> None:
    """Give every transformer block from index `keep` on fresh weights, in each stack (an encoder-decoder's encoder
    and decoder alike): GPT-1's layers-transferred ablation."""
    stacks = transformer_blocks(model)
    for name, blocks in stacks.items():
        if keep > len(blocks):
            raise FinetuneError(f"model.pretrained_layers: {keep} is more than the model's {len(blocks)} {name} blocks")
    for blocks in stacks.values():
        for block in list(blocks)[keep:]:
            for tensor in (*block.parameters(), *block.buffers()):
                tensor._is_hf_initialized = False  # transformers skips tensors it loaded from the checkpoint
            block.apply(model._init_weights)
    depths = " and ".join(f"{len(blocks)} {name}" for name, blocks in stacks.items())
    log.info("pretrained blocks kept: the first %d of %s blocks; the rest start from fresh weights", keep, depths)


def keep_every_other_block(model: PreTrainedModel) -> None:
    """DistilBERT's student: the teacher with blocks 0, 2, 4, ... of its stack kept and the others removed."""
    if model.config.is_encoder_decoder:
        raise FinetuneError(
            "model.init_from_teacher: halves an encoder's or a decoder's stack, not an encoder-decoder's"
        )
    (blocks,) = transformer_blocks(model, "model.init_from_teacher").values()
    depth = len(blocks)
    for index in reversed(range(1, depth, 2)):
        del blocks[index]  # the list renumbers its blocks
    for index, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):  # a decoder's key-value cache slot
                module.layer_idx = index
    model.config.num_hidden_layers = len(blocks)
    if getattr(model.config, "layer_types", None):  # per-block attention kinds (Llama and kin)
        model.config.layer_types = model.config.layer_types[::2]
    log.info("student: blocks 0, 2, ... of the teacher's %d kept (%d)", depth, len(blocks))


def load_finetuned(folder: str, model_class: type) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer saved by a run (its folder or one of its checkpoints)."""
    if (Path(folder) / HEAD_CONFIG).is_file():
        model_class = ExtractTokenModel
    try:
        tokenizer = with_vocabulary(AutoTokenizer.from_pretrained(folder), str(folder))
        return model_class.from_pretrained(folder, use_safetensors=True), tokenizer  # runs save safetensors
    except LOAD_ERRORS as exc:
        raise FinetuneError(f"{folder}: cannot load the fine-tuned model: {first_line(exc)}") from None


def load_adapter(
    recipe: Recipe,
    resolved: ResolvedModel,
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    dequantize: bool = False,
) -> torch.nn.Module:
    """A run's adapter (with its head) on the base it was trained from, loaded as the recipe says (4/8-bit too;
    with `dequantize`, the quantised base's weights in full precision, as a merge needs them)."""
    backbone = load_backbone(recipe, resolved, task, tokenizer)
    if dequantize and recipe.quantize is not None:
        backbone = backbone.dequantize()
    try:
        model = PeftModel.from_pretrained(backbone, str(folder))
    except LOAD_ERRORS as exc:  # an adapter for another base: size mismatches, as RuntimeError
        raise FinetuneError(f"{folder}: cannot load the adapter: {first_line(exc)}") from None
    return ExtractTokenModel.from_pretrained(folder, lm=model) if task.gpt1_ids is not None else model
