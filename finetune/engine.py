"""The training engine on accelerate: setup -> train -> finish, with one visible loop.

The engine knows nothing about tasks: it gets a model that returns a loss, datasets, a collator and
an evaluation function. It owns the optimizer, schedule, precision, accumulation, clipping,
evaluation cadence, early stopping, best-checkpoint selection and resumable checkpoints.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import Dataset
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm
from transformers import (
    PreTrainedTokenizerBase,
)

from finetune.batching import EpochSampler, chunks, example_length
from finetune.checkpoints import BEST_DIR, Checkpoints
from finetune.columns import EXAMPLES
from finetune.errors import FinetuneError, Interrupted
from finetune.losses import Loss
from finetune.metrics import GREATER_IS_BETTER
from finetune.optimization import make_optimizer, make_scheduler, warmup_steps
from finetune.progress import TrainState, Window, throughput
from finetune.recipe.schema import TrainSpec
from finetune.rundir import LOG_FILE, JsonlLog, checkpoint_dirs
from finetune.stopping import stop_signals
from finetune.streaming import StreamOrder
from finetune.tracking import Trackers

log = logging.getLogger(__name__)

Evaluate = Callable[[torch.nn.Module, DataLoader, int], dict[str, float]]  # (model, loader, step) -> metrics


class Steps(Protocol):
    """What the engine asks of a task about a batch (a Task is one)."""

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Loss, torch.Tensor | None]:
        """The batch's loss terms (summed over their items) and the model's outputs."""

    def loss_items(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Items per loss term, known before the forward pass."""

    def token_counts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(2,): the batch's real tokens and the tokens computed, padding included."""


class Engine:
    """Runs one training job. Call `setup`, then `train`; `train` returns the final state."""

    def __init__(self, spec: TrainSpec, run_dir: Path, accelerator: Accelerator, metric: str) -> None:
        self.spec, self.run_dir, self.accelerator = spec, run_dir, accelerator
        self.metric = metric
        self.state = TrainState()
        self.log = JsonlLog(run_dir / LOG_FILE, enabled=accelerator.is_main_process)
        self.trackers: Trackers | None = None

    # -- setup ---------------------------------------------------------------------------------
    def setup(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        collator: Callable,
        steps: Steps,
        train_set: Dataset,
        eval_set: Dataset,
        evaluate: Evaluate,
        resume_from: Path | None,
    ) -> None:
        set_seed(self.spec.seed)
        self.tokenizer, self.steps, self.evaluate = tokenizer, steps, evaluate
        self.checkpoints = Checkpoints(self.accelerator, self.run_dir, tokenizer, self.spec.keep_checkpoints)
        if self.spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pending_tokens = torch.zeros(2, dtype=torch.long, device=self.accelerator.device)
        self.sampler, train_loader = self._setup_train_loader(train_set, collator)
        eval_loader = DataLoader(
            eval_set, batch_size=self.spec.eval_batch_size, collate_fn=collator, generator=torch.Generator()
        )
        optimizer = make_optimizer(model, self.spec, self.accelerator.device)
        self.model, self.optimizer, self.train_loader, self.eval_loader = self.accelerator.prepare(
            model, optimizer, train_loader, eval_loader
        )
        if self.spec.compile:  # in place: the module (and the names of its weights) stays the same
            self.model.compile(dynamic=True)
        # a stream (data.streaming) has no length: its recipe sets train.max_steps, and an epoch ends when it does
        self.sized = not isinstance(train_set, IterableDataset)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.spec.grad_accum) if self.sized else None
        self.total_steps = self.spec.max_steps or math.ceil(self.spec.epochs * self.steps_per_epoch)
        self.scheduler = make_scheduler(self.optimizer, self.spec, self.total_steps)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.train_size = len(train_set) if self.sized else None
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        world = self.accelerator.num_processes
        log.info(
            "batch %d x %d devices (%s) x %d accum = %d/step; %d steps (%s per epoch), warmup %d",
            self.spec.batch_size,
            world,
            self.accelerator.distributed_type.value,
            self.spec.grad_accum,
            self.spec.batch_size * world * self.spec.grad_accum,
            self.total_steps,
            self.steps_per_epoch or "streamed: unknown",
            warmup_steps(self.spec, self.total_steps),
        )

    @property
    def num_train_samples(self) -> int:
        """The training split's examples; for a stream, the examples trained on."""
        return self.train_size if self.sized else self.state.samples_seen

    def _setup_train_loader(self, train_set: Dataset, collator: Callable) -> tuple[Any, DataLoader]:
        if isinstance(train_set, IterableDataset):  # in the stream's seeded order, batched as it comes
            stream = StreamOrder(train_set, self.spec.seed, self.spec.batch_size, self.spec.group_by_length)
            generator = torch.Generator().manual_seed(self.spec.seed)  # as below: the global RNG left to dropout
            return stream, DataLoader(stream, batch_size=self.spec.batch_size, collate_fn=collator, generator=generator)
        lengths = [example_length(ids) for ids in train_set["input_ids"]] if self.spec.group_by_length else None
        sampler = EpochSampler(len(train_set), self.spec.seed, lengths, self.spec.batch_size)
        # Its own generator: creating a loader iterator must not draw from the global RNG (dropout),
        # or a resumed run would see different dropout masks than an uninterrupted one.
        loader = DataLoader(
            train_set,
            batch_size=self.spec.batch_size,
            sampler=sampler,
            collate_fn=collator,
            generator=torch.Generator().manual_seed(self.spec.seed),
        )
        return sampler, loader

    # -- train ---------------------------------------------------------------------------------
    def train(self, trackers: Trackers | None = None) -> TrainState:
        """The loop: each step's micro-batches forward and backward, then clip, step, log, evaluate, checkpoint;
        every log record also goes to `trackers`."""
        state, acc = self.state, self.accelerator
        self.trackers = trackers
        bar = tqdm(
            total=self.total_steps,
            initial=state.global_step,
            desc="train",
            unit="step",
            disable=not acc.is_local_main_process,
            dynamic_ncols=True,
        )
        window = Window()
        with stop_signals() as received:
            try:
                self._loop(window, bar, received)
            finally:  # an error's line starts on a line of its own
                bar.close()
        self._count_tokens()
        if state.last_eval_step != state.global_step:
            self._evaluate()
        return state

    def _loop(self, window: Window, bar: tqdm, received: list[int]) -> None:
        state, spec, acc = self.state, self.spec, self.accelerator
        while state.global_step < self.total_steps and not state.stopped_early:
            self.model.train()
            self.train_loader.set_epoch(state.epoch)
            if hasattr(self.train_loader.collate_fn, "set_epoch"):  # batches drawn at random per example and epoch
                self.train_loader.collate_fn.set_epoch(state.epoch)
            loader = (
                acc.skip_first_batches(self.train_loader, state.batches_in_epoch)
                if state.batches_in_epoch
                else self.train_loader
            )
            ran_out = True
            for batches in chunks(loader, spec.grad_accum):  # one optimizer step's micro-batches
                loss, norm = self._step(batches)
                window.add(loss, self._examples(batches), norm)
                state.batches_in_epoch += len(batches)
                state.global_step += 1
                self._after_step(window, bar)
                if state.global_step >= self.total_steps or state.stopped_early:
                    ran_out = False
                    break
                self._stop_if_signalled(received)
            if ran_out and state.batches_in_epoch == 0:
                raise FinetuneError("data.train_split: the streamed training split yields no examples")
            # the epoch ran to its end (the last one too; a stream's ends when it runs out)
            if ran_out or (self.sized and state.batches_in_epoch == len(self.train_loader)):
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                self._after_epoch()
                window.restart_clock()  # end-of-epoch evaluation and saving are not training time

    def _stop_if_signalled(self, received: list[int]) -> None:
        """After a step: when any process got SIGTERM or SIGINT, every process saves the checkpoint and stops."""
        acc = self.accelerator
        flag = torch.tensor(float(received[0] if received else 0), device=acc.device)
        if acc.num_processes > 1:  # all of them stop at the same step, or the collectives would hang
            flag = acc.reduce(flag, reduction="max")
        number = int(flag.item())
        if number:
            self._save_checkpoint()
            raise Interrupted(signal.Signals(number).name, number, self.state.global_step, str(self.run_dir))

    def _step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over its micro-batches; returns this process's part of the step's loss, and the
        gradient norm before clipping (None when train.max_grad_norm is 0: nothing computes it).

        Each loss term is divided by its items in the whole step (every micro-batch, every process), so the
        gradient is that of the step's mean loss however the step is split; data parallelism averages the
        processes' gradients, hence the factor of the process count.
        """
        acc = self.accelerator
        totals = self._step_items(batches)
        local = torch.zeros((), device=acc.device)
        for i, batch in enumerate(batches):
            with acc.no_sync(self.model) if i < len(batches) - 1 else nullcontext():
                loss, _ = self.steps.forward(self.model, batch)
                share = loss.share(totals)
                acc.backward(share * acc.num_processes)
            local += share.detach().float()
        norm = None
        if self.spec.max_grad_norm > 0:
            norm = acc.clip_grad_norm_(self.model.parameters(), self.spec.max_grad_norm)
        # a GradScaler (fp16) skips its own overflowing steps: only the loss is ours to judge there
        if self._finite(local if acc.scaler is not None or norm is None else local + norm):
            self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        return local, norm

    def _finite(self, value: torch.Tensor) -> bool:
        """Is this step's loss (and gradient norm) finite on every process? A step that is not never updates the
        weights: train.nonfinite_steps stops the run, naming the step and the last checkpoint, or skips it."""
        bad = (~torch.isfinite(value.detach().float())).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="max")
        if not bad.item():
            return True
        step = self.state.global_step + 1
        if self.spec.nonfinite_steps == "skip":
            self.state.skipped_steps += 1
            log.warning(
                "step %d: the loss or gradient is not finite; skipped (%d so far)", step, self.state.skipped_steps
            )
            return False
        last = checkpoint_dirs(self.run_dir)
        where = f"the last checkpoint is {last[-1]}" if last else "no checkpoint was written before it"
        raise FinetuneError(
            f"train: the loss or gradient norm is not finite at step {step}, so the run stopped before updating "
            f"the weights with it; {where}. Lower train.lr, keep train.max_grad_norm on, use bf16 rather than "
            "fp16, or set train.nonfinite_steps: skip"
        )

    def _step_items(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Items per loss term in the whole step: this process's micro-batches, summed over the processes (in the
        same collective, the step's real and computed tokens, added to `pending_tokens`)."""
        counts = [self.steps.loss_items(batch) for batch in batches]
        names = sorted(counts[0])
        device = self.accelerator.device
        tokens = sum(self.steps.token_counts(batch).to(device) for batch in batches)
        local = torch.cat([torch.stack([sum(c[name] for c in counts).to(device) for name in names]), tokens])
        total = self.accelerator.reduce(local, "sum")
        self.pending_tokens += total[len(names) :]
        return dict(zip(names, total))

    def _count_tokens(self) -> None:
        """Move the tokens counted since the last call into the train state (one device-to-host copy)."""
        real, computed = self.pending_tokens.tolist()
        self.state.real_tokens += real
        self.state.computed_tokens += computed
        self.pending_tokens.zero_()

    def _examples(self, batches: list[dict[str, torch.Tensor]]) -> int:
        """Training examples in the step, every process counted (a packed batch has fewer rows than examples)."""
        local = sum(int(b[EXAMPLES]) if EXAMPLES in b else len(b["input_ids"]) for b in batches)
        return local * self.accelerator.num_processes

    def _after_step(self, window: Window, bar: tqdm) -> None:
        state, spec = self.state, self.spec
        state.samples_seen += window.pending_samples
        state.train_seconds += window.take_time()
        window.time_steps(state, self.total_steps)
        if state.global_step % spec.log_every == 0 or state.global_step == self.total_steps:
            self._count_tokens()
            record = {
                "step": state.global_step,
                "epoch": self._epoch(),
                "loss": window.mean_loss(self.accelerator),
                "lr": self.scheduler.get_last_lr()[0],
                **({"grad_norm": round(float(window.grad_norm), 6)} if window.grad_norm is not None else {}),
                **throughput(state),
            }
            self._write(record)
            bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                sps=record["samples_per_second"],
                tps=record["tokens_per_second"],
                pad=f"{record['padding_share']:.1%}",
            )
            window.reset_loss()
        bar.update(1)
        evaluated = spec.eval_every != "epoch" and state.global_step % spec.eval_every == 0
        if evaluated:
            self._evaluate()
        if (spec.save_every == "eval" and evaluated) or (
            isinstance(spec.save_every, int) and state.global_step % spec.save_every == 0
        ):
            self._save_checkpoint()
        window.restart_clock()

    def _epoch(self) -> float:
        """Epochs trained: in steps, or for a stream (of unknown length) the passes it has run to their end."""
        return round(self.state.global_step / self.steps_per_epoch, 4) if self.sized else self.state.epoch

    def _after_epoch(self) -> None:
        if self.spec.eval_every == "epoch":
            self._evaluate()
        if self.spec.save_every == "epoch" or (self.spec.save_every == "eval" and self.spec.eval_every == "epoch"):
            self._save_checkpoint()

    def _evaluate(self) -> None:
        state = self.state
        metrics = self.evaluate(self.model, self.eval_loader, state.global_step)
        self.model.train()
        state.last_eval_step, state.last_metrics = state.global_step, metrics
        self._write(
            {
                "step": state.global_step,
                "epoch": self._epoch(),
                **{f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in metrics.items()},
            }
        )
        log.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        value = metrics[self.metric]
        sign = 1 if GREATER_IS_BETTER.get(self.metric, True) else -1
        min_delta = self.spec.early_stopping.min_delta if self.spec.early_stopping else 0.0
        # NaN (a constant prediction's correlation, an overflow) counts as the worst value, never as the best
        first = state.best_metric is None or math.isnan(state.best_metric)
        if not math.isnan(value) and (first or sign * (value - state.best_metric) > min_delta):
            state.best_metric, state.best_step, state.best_metrics = value, state.global_step, metrics
            state.evals_without_improvement = 0
            if self.spec.select_best:
                self.checkpoints.save_model(self.model, self.run_dir / BEST_DIR, state.global_step)
        else:
            state.evals_without_improvement += 1
            if self.spec.early_stopping and state.evals_without_improvement >= self.spec.early_stopping.patience:
                log.info(
                    "early stop: %s has not improved for %d evaluations", self.metric, state.evals_without_improvement
                )
                state.stopped_early = True

    def _write(self, record: dict[str, Any]) -> None:
        """A record into log.jsonl and to the trackers."""
        self.log.write(record)
        if self.trackers is not None:
            self.trackers.log(record)

    # -- saving --------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        self._count_tokens()
        self.checkpoints.save(self.model, self.state, len(self.log.read()))

    def _load_checkpoint(self, folder: Path) -> None:
        saved = self.checkpoints.load(self.model, folder)
        self.log.keep_first(saved.pop("log_records"))  # what was logged after the checkpoint is logged again
        self.state = TrainState(**saved)
        if self.state.threads != torch.get_num_threads():
            log.warning(
                "this run trained with %d CPU threads per process and resumes with %d: the weights will differ from "
                "an uninterrupted run's by rounding (OMP_NUM_THREADS=%d resumes exactly)",
                self.state.threads,
                torch.get_num_threads(),
                self.state.threads,
            )
            self.state.threads = torch.get_num_threads()
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            folder,
            self.state.global_step,
            self.state.epoch,
            self.state.batches_in_epoch,
        )

    def save_final(self) -> dict[str, float]:
        """Put the final weights in the run folder (the best evaluation's, if selected); return their metrics."""
        from_best = self.spec.select_best and (self.run_dir / BEST_DIR).is_dir()
        self.checkpoints.save_final(self.model, self.state.global_step, from_best)
        return self.state.best_metrics if from_best else self.state.last_metrics
