"""A causal LM's loss without its vocabulary-wide logits at every position.

The loss reads the logits of the labelled positions only, so the model is asked for those alone (transformers'
`logits_to_keep` with a (B, T) mask): a response's tokens, not its prompt nor padding. On a 49k-word vocabulary
the full logits were the largest tensor of a step, and evaluation's larger batches made them the run's peak.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finetune.families import DECODER_TYPES
from finetune.losses import IGNORE, Loss, targets_loss


def causal_lm_loss(
    lm: nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor,
    term: str = "task",
    segments: torch.Tensor | None = None,
    hidden: bool = False,
) -> tuple[Loss, torch.Tensor | None]:
    """The LM's token loss on `labels` (B, T) for `inputs` (the label at t is predicted at t - 1) and, with `hidden`,
    its final hidden states (B, T, H).

    The decoders the project lists compute logits at the predicting positions only (tests prove the loss equal to
    the full logits' on each); any other model computes them everywhere. `lm` may be a data-parallel wrapper: the
    call goes through it, so that its gradients are synchronised.
    """
    shifted = labels[:, 1:]
    segments = segments[:, 1:] if segments is not None else None
    if getattr(lm, "module", lm).config.model_type in DECODER_TYPES:
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = shifted != IGNORE
        output = lm(**inputs, logits_to_keep=keep, output_hidden_states=hidden)
        logits = output.logits  # (N, V)
    else:
        output = lm(**inputs, output_hidden_states=hidden)
        logits = output.logits[:, :-1][shifted != IGNORE]
    return targets_loss(logits, shifted, term, segments), (output.hidden_states[-1] if hidden else None)
