"""Where a training run stands (saved in its checkpoints), its loss and throughput since the last log line, and
the expected training time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

log = logging.getLogger("finetune.engine")
TIMED_STEPS = 10  # steps measured before the expected training time is logged


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint, so a resumed run continues exactly."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    real_tokens: int = 0  # tokens trained on, padding excluded
    computed_tokens: int = 0  # tokens the model computed, padding included
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_eval_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    skipped_steps: int = 0  # steps whose loss or gradient was not finite, under train.nonfinite_steps: skip
    stopped_early: bool = False
    # CPU threads per process: weights are bit-identical across runs and resumes only at the same count
    threads: int = field(default_factory=torch.get_num_threads)


def throughput(state: TrainState) -> dict[str, float]:
    """Samples and real tokens per second of training so far, and the share of computed tokens that were padding."""
    seconds = max(state.train_seconds, 1e-9)
    return {
        "samples_per_second": round(state.samples_seen / seconds, 2),
        "tokens_per_second": round(state.real_tokens / seconds, 1),
        "padding_share": round(1 - state.real_tokens / max(state.computed_tokens, 1), 4),
    }


class Window:
    """Loss and throughput since the last log line."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | float = 0.0  # this process's part of each step's loss, added
        self.steps = 0
        self.pending_samples = 0
        self.clock = time.perf_counter()
        self.timed: list[tuple[int, float]] = []  # (step, training seconds) at the first steps of this process
        self.grad_norm: torch.Tensor | None = None

    def time_steps(self, state: TrainState, total_steps: int) -> None:
        """After the first steps of this process (the very first is a warm-up), log the expected training time."""
        if len(self.timed) > TIMED_STEPS:
            return
        self.timed.append((state.global_step, state.train_seconds))
        if len(self.timed) == TIMED_STEPS + 1 and state.global_step < total_steps:
            (first, start), (last, now) = self.timed[0], self.timed[-1]
            per_step = (now - start) / (last - first)
            log.info(
                "expected training time: %.1f min (%d steps x %.2f s per step, measured over steps %d-%d; "
                "evaluation and saving come on top)",
                total_steps * per_step / 60,
                total_steps,
                per_step,
                first + 1,
                last,
            )

    def add(self, loss: torch.Tensor, samples: int, grad_norm: torch.Tensor | None) -> None:
        self.loss_sum, self.steps = self.loss_sum + loss, self.steps + 1
        self.pending_samples += samples
        self.grad_norm = grad_norm  # the last step's, before clipping (as the HF Trainer logs it)

    def take_time(self) -> float:
        elapsed, self.pending_samples = time.perf_counter() - self.clock, 0
        return elapsed

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def mean_loss(self, accelerator: Accelerator) -> float:
        """The steps' mean loss, every process's part added (every process must call it at the same step)."""
        total = accelerator.reduce(torch.as_tensor(self.loss_sum, device=accelerator.device).float(), "sum")
        return round(total.item() / max(self.steps, 1), 6)

    def reset_loss(self) -> None:
        self.loss_sum, self.steps = 0.0, 0
