"""GPT-1's decoder head, which the libraries do not have: a linear layer on the final hidden state at the
`[extract]` token, with the language-modelling loss on the inputs as an auxiliary loss.

    loss = task_loss + aux_lm_weight * lm_loss      (GPT-1 used 0.5; 0 turns it off)

The decoder keeps its LM head (`AutoModelForCausalLM`), so the auxiliary loss is the model's own LM loss on every
real input token (not padding, nor a token predicted from padding). Without it the LM head is not run at all
(and an untied one is frozen: nothing trains it). Saved as the decoder's own checkpoint (loadable by
`AutoModelForCausalLM`, with the added tokens) plus `extract_head.safetensors` and `extract_head.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from finetune.lm_loss import causal_lm_loss
from finetune.losses import lm_targets

# GPT-1's special tokens, added to a decoder's tokenizer (and embeddings) when it lacks them.
GPT1_TOKENS = {"start": "<|start|>", "delim": "<|delim|>", "extract": "<|extract|>"}
HEAD_WEIGHTS, HEAD_CONFIG = "extract_head.safetensors", "extract_head.json"


def add_gpt1_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add `[start]`, `[delim]`, `[extract]` (and a pad token if missing); return their ids by role."""
    missing = [t for t in GPT1_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif tokenizer.pad_token is None:  # openai-gpt has neither
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return {role: tokenizer.convert_tokens_to_ids(token) for role, token in GPT1_TOKENS.items()}


class ExtractTokenModel(nn.Module):
    """A causal LM with a linear head on the hidden state at the `[extract]` token of each sequence.

    The position is found from the token itself, so left and right padding give the same result.
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        num_labels: int,
        extract_id: int,
        aux_lm_weight: float,
        problem_type: str | None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.lm, self.extract_id, self.aux_lm_weight, self.problem_type = lm, extract_id, aux_lm_weight, problem_type
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(lm.config.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if aux_lm_weight == 0:  # an untied LM head gets no gradient (and data-parallel training would stop on it)
            tied = {id(p) for p in lm.get_input_embeddings().parameters()}
            for parameter in lm.get_output_embeddings().parameters():
                if id(parameter) not in tied:
                    parameter.requires_grad_(False)

    @property
    def config(self) -> Any:
        return self.lm.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lm_rows: torch.Tensor | None = None,
        **_: Any,
    ) -> ModelOutput:
        """Logits (B, num_labels); with the auxiliary loss, its weighted sum over the LM targets and their count
        (`lm_rows` (B,): the rows whose tokens are targets, default all). The task's loss is the task's to add."""
        # positions count real tokens only, so a left-padded sequence sees the positions a right-padded one does
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        lm = None
        if self.aux_lm_weight > 0:
            targets = lm_targets(input_ids, attention_mask, lm_rows)
            lm, hidden = causal_lm_loss(self.lm, inputs, targets, term="lm", hidden=True)  # hidden (B, L, H)
        else:  # the decoder's body alone: no vocabulary-wide logits that no loss reads
            hidden = decoder_body(self.lm)(**inputs).last_hidden_state  # (B, L, H)
        positions = extract_positions(input_ids, self.extract_id)  # (B,)
        features = hidden[torch.arange(len(positions), device=hidden.device), positions]  # (B, H)
        logits = self.head(self.dropout(features))  # (B, num_labels)
        result = ModelOutput(logits=logits)
        if lm is not None:
            result["lm_loss_sum"], result["lm_tokens"] = self.aux_lm_weight * lm.sums["lm"], lm.items["lm"]
        return result

    # -- the parts of the PreTrainedModel interface the engine and pipeline use --------------------
    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.lm.gradient_checkpointing_enable(**kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _init_weights(self, module: nn.Module) -> None:
        self.lm._init_weights(module)

    def save_pretrained(
        self,
        folder: str | Path,
        state_dict: dict | None = None,
        is_main_process: bool = True,
        save_function: Any = torch.save,
        **_: Any,
    ) -> None:
        folder = Path(folder)
        state = state_dict if state_dict is not None else self.state_dict()
        lm_state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
        # a LoRA decoder keeps its added tokens' rows in the adapter, not whole embedding matrices
        extra = {"save_embedding_layers": False} if hasattr(self.lm, "peft_config") else {}
        self.lm.save_pretrained(
            folder, state_dict=lm_state, is_main_process=is_main_process, save_function=save_function, **extra
        )
        if is_main_process:
            head = {k.removeprefix("head."): v.contiguous() for k, v in state.items() if k.startswith("head.")}
            save_file(head, str(folder / HEAD_WEIGHTS))
            self.write_settings(folder)

    def write_settings(self, folder: Path) -> None:
        """What rebuilds this head around a decoder (also written into resumable checkpoints)."""
        settings = {
            "num_labels": self.head.out_features,
            "extract_id": self.extract_id,
            "aux_lm_weight": self.aux_lm_weight,
            "problem_type": self.problem_type,
            "dropout": self.dropout.p,
        }
        (Path(folder) / HEAD_CONFIG).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | Path, lm: nn.Module | None = None, **kwargs: Any) -> ExtractTokenModel:
        """The head saved in `folder` around its decoder: the one saved beside it, or `lm` (a base with the run's
        adapter loaded)."""
        folder = Path(folder)
        settings = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
        if lm is not None or (folder / HEAD_WEIGHTS).is_file():  # a run folder: the decoder and the head beside it
            model = cls(lm if lm is not None else AutoModelForCausalLM.from_pretrained(folder, **kwargs), **settings)
            model.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
            return model
        # a resumable checkpoint: accelerate saved this module's whole state dict (lm.*, head.*) in one file
        model = cls(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)), **settings)
        missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        if unexpected or any(not key.endswith("lm_head.weight") for key in missing):
            raise ValueError(f"{folder}: checkpoint weights do not match the model ({(missing + unexpected)[:3]})")
        model.lm.tie_weights()  # a tied output layer is stored once
        return model


def decoder_body(lm: nn.Module) -> nn.Module:
    """The transformer under a causal LM's output layer (through a peft wrapper: its adapters stay active)."""
    causal = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return causal.base_model


def extract_positions(input_ids: torch.Tensor, extract_id: int) -> torch.Tensor:
    """The index of the last `[extract]` token in each row (B, L) -> (B,)."""
    is_extract = (input_ids == extract_id).int()
    index = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (is_extract * index).argmax(-1)
