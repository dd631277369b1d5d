"""The optimizer and the learning-rate schedule a recipe's train section asks for."""

from __future__ import annotations

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from finetune.recipe.schema import TrainSpec

SCHEDULES = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "constant": lambda optimizer, warmup, _: get_constant_schedule_with_warmup(optimizer, warmup),
}


def make_optimizer(model: torch.nn.Module, spec: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (torch's fused, or bitsandbytes' 8-bit) over the trainable parameters; no weight decay on biases and
    LayerNorm weights (the 1-D parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": spec.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    settings = {"lr": spec.lr, "betas": spec.adam_betas, "eps": spec.adam_eps}
    if spec.optimizer == "adamw":  # fused: one kernel for every parameter (the HF Trainer's default too)
        fused = device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, fused=fused or None, **settings)
    import bitsandbytes as bnb  # slow to import: only when asked for

    optimizer = bnb.optim.PagedAdamW8bit if spec.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return optimizer(groups, **settings)


def warmup_steps(spec: TrainSpec, total_steps: int) -> int:
    """train.warmup in steps: below 1 a share of the total steps, from 1 up a number of steps."""
    return int(spec.warmup) if spec.warmup >= 1 else round(spec.warmup * total_steps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainSpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then linear or cosine decay to zero, or constant."""
    return SCHEDULES[spec.schedule](optimizer, warmup_steps(spec, total_steps), total_steps)
