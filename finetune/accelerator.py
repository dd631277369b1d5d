"""The accelerate `Accelerator` for a run, and the compute precision this machine runs natively."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration

from finetune.errors import FinetuneError
from finetune.recipe.schema import TrainSpec

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours: accelerate's


def make_accelerator(spec: TrainSpec) -> Accelerator:
    """An Accelerator for this machine; refuses a precision the hardware lacks (`auto` settles here too)."""
    precision = settle_precision(spec.precision)
    check_precision(precision)
    # A second run in the same process (notebooks, tests) may ask for another precision; the
    # distributed state (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a machine without an accelerator lets several launched processes form a gloo group.
    # Accumulation is the engine's own (a step's loss is divided by the step's items, not by grad_accum).
    # A stream's batches are not dispatched from the main process (accelerate's default for iterable datasets):
    # they are padded per batch, and processes' batches of different widths cannot be stacked; each process reads
    # the stream in the same seeded order and keeps its share of every global batch.
    return Accelerator(
        mixed_precision=MIXED_PRECISION[precision],
        cpu=not torch.accelerator.is_available(),
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
    )


def check_precision(precision: str) -> None:
    """Is this precision available here? (The recipe itself is valid either way.)"""
    if precision == "fp16" and not torch.cuda.is_available():
        raise FinetuneError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on this machine")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise FinetuneError("train.precision: this GPU has no bf16; use fp16 or fp32")


def settle_precision(precision: str) -> str:
    """`auto`: bf16 where the hardware computes it natively, else fp32; any other value as it is."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16() else "fp32"


def native_bf16() -> bool:
    """A CUDA GPU with bf16 units, or a CPU with AVX512-BF16 or AMX (read from /proc/cpuinfo: torch exposes no
    such check, and its own bf16 test also passes on CPUs that only emulate it, slower than fp32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if torch.accelerator.is_available():  # MPS, XPU: fp32 until measured
        return False
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo.read_text()) is not None
