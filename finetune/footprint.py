"""The memory and size report every run's metrics carry: parameters (total, trainable, share), the model's
footprint in memory, peak memory, and the size on disk of what the run saved."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from finetune.adapters import ADAPTER_WEIGHTS
from finetune.heads import HEAD_WEIGHTS

MB = 2**20


def parameter_report(model: torch.nn.Module) -> dict[str, float]:
    """Total and trainable parameters, the trainable share, and the weights' footprint in memory (MB).

    A 4-bit weight is stored packed, two values a byte, so it counts as half its element count.
    """
    total = trainable = footprint = 0
    for param in model.parameters():
        count = param.numel() * (2 if param.dtype == torch.uint8 and hasattr(param, "quant_state") else 1)
        total += count
        trainable += count if param.requires_grad else 0
        footprint += param.numel() * param.element_size()
    footprint += sum(buffer.numel() * buffer.element_size() for buffer in model.buffers())
    return {
        "total_parameters": total,
        "trainable_parameters": trainable,
        "trainable_share": round(trainable / max(total, 1), 6),
        "model_footprint_mb": round(footprint / MB, 1),
    }


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process, and the GPU's peak allocation when there is one (MB)."""
    peaks = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peaks["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    return peaks


def saved_size(run_dir: Path) -> dict[str, float]:
    """Size on disk of the saved weights: the adapter (and a decoder head's weights), else the full model."""
    if (run_dir / ADAPTER_WEIGHTS).is_file():
        adapter = [run_dir / name for name in (ADAPTER_WEIGHTS, HEAD_WEIGHTS) if (run_dir / name).is_file()]
        return {"adapter_size_mb": round(sum(p.stat().st_size for p in adapter) / MB, 3)}
    weights = [*run_dir.glob("*.safetensors")]
    return {"model_size_mb": round(sum(p.stat().st_size for p in weights) / MB, 1)}
