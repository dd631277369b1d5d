"""LoRA's input dropout fused into the adapter's first matrix, keeping a one-byte mask for backward.

peft computes `lora_B(lora_A(dropout(x)))`. For backward, torch's CPU dropout keeps its float noise tensor and
`lora_A` keeps the dropped input: eight bytes per input element per adapted projection, and q, k and v each keep
their own copies of the same hidden states (on SmolLM2-135M with 2,640 tokens a step, about 2 GB of its 7). Fused,
backward keeps the input itself (one tensor, shared by every projection that reads it) and a bool mask, and
rebuilds the dropped input when it needs it. The mask is drawn as torch's CPU dropout draws it, so on a CPU the
values and gradients are peft's own, bit for bit; the parameters and their names do not change.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn


class _DroppedLinear(torch.autograd.Function):
    """`linear(dropout(x), weight)`, saving x and the keep mask instead of the dropped x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)  # the draw of torch's CPU dropout
        out = nn.functional.linear(x * noise, weight)
        ctx.save_for_backward(x, noise.bool(), weight)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        x, keep, weight = ctx.saved_tensors
        noise = keep.to(x.dtype).div_(1 - ctx.p)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight.to(grad.dtype)).to(x.dtype) * noise
        if ctx.needs_input_grad[1]:  # in the dtype the forward's matrix product ran in (bf16 under autocast)
            dropped = (x * noise).to(grad.dtype)
            grad_weight = (grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return grad_x, grad_weight, None


class DroppedLinear(nn.Linear):
    """A LoRA A matrix (no bias) applying its dropout itself while training; holds the same weight Parameter."""

    def __init__(self, linear: nn.Linear, p: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.p = linear.in_features, linear.out_features, p
        self.weight = linear.weight
        self.register_parameter("bias", None)
        self.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return _DroppedLinear.apply(x, self.weight, self.p)
        return nn.functional.linear(x, self.weight)


def fuse_lora_dropout(model: nn.Module) -> int:
    """Fuse each plain LoRA linear adapter's dropout into its A matrix; returns how many were fused. DoRA and other
    variants, embeddings and convolutions keep peft's own dropout."""
    fused = 0
    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        for name, dropout in list(layer.lora_dropout.items()):
            lora_a = layer.lora_A[name] if name in layer.lora_A else None
            plain = type(lora_a) is nn.Linear and lora_a.bias is None and name not in layer.lora_variant
            if plain and isinstance(dropout, nn.Dropout) and dropout.p > 0:
                layer.lora_A[name] = DroppedLinear(lora_a, dropout.p)
                layer.lora_dropout[name] = nn.Identity()
                fused += 1
    return fused
