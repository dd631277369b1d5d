"""The recipe schema: every option, its type, default and description, in one place.

Importing this module must stay cheap (no torch, no transformers): `finetune validate` runs on it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from finetune.recipe.data_section import DataSpec
from finetune.specs import TaskSpec
from finetune.specs.base import Section

Family = Literal["auto", "encoder", "decoder", "encoder-decoder"]
Beta = Annotated[float, Field(ge=0, lt=1)]
Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio"]

# Names other tools use for our options, so that a familiar spelling gets the right suggestion.
KEY_ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "warmup_ratio": "warmup",
    "warmup_steps": "warmup",
    "max_seq_length": "max_length",
    "model_name_or_path": "name",
    "label_column": "label",
    "label_names": "labels",
}


class ModelSpec(Section):
    """The pretrained checkpoint to start from."""

    name: str = Field(description="Hub id (org/name) or local path (starting with ./, ../, / or ~) of the checkpoint.")
    family: Family = Field("auto", description="Architecture family; auto reads it from the checkpoint's config.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    trust_remote_code: bool = Field(
        False, description="Run modelling code shipped with the checkpoint; off unless you trust its author."
    )
    allow_pickle: bool = Field(
        False,
        description="Load weights stored only as pickle (pytorch_model.bin), which can run code when loaded; off: "
        "safetensors only.",
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: the same architecture with fresh weights (the no-pretraining ablation)."
    )
    pretrained_layers: PositiveInt | None = Field(
        None,
        description="Keep only the first N pretrained transformer blocks of each stack (an encoder-decoder's encoder "
        "and decoder alike); the later ones start from fresh weights. N may not exceed the shallowest stack.",
    )
    init_from_teacher: Literal["every_other_layer"] | None = Field(
        None,
        description="distillation: build the student from the teacher (model.name names it) with every other "
        "transformer block kept (blocks 0, 2, 4, ...), as DistilBERT initialised its student.",
    )
    dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="The weights' type in memory. bf16 halves them (a LoRA or QLoRA base, or a full fine-tune "
        "trained in bf16 throughout, without fp32 master weights); train.precision sets the compute type.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel: auto is transformers' choice for the model (sdpa where it has it); "
        "flash_attention_2 needs the flash-attn package and a GPU.",
    )

    @model_validator(mode="after")
    def _layers_need_pretraining(self) -> ModelSpec:
        if self.init == "random" and self.pretrained_layers is not None:
            raise ValueError("model.pretrained_layers: needs model.init: pretrained")
        return self


class EarlyStopping(Section):
    """Stop when the selection metric has not improved for a while."""

    patience: PositiveInt = Field(3, description="Evaluations without improvement before training stops.")
    min_delta: NonNegativeFloat = Field(0.0, description="Smallest change that counts as an improvement.")


class TrainSpec(Section):
    """Optimisation and the training loop."""

    epochs: PositiveFloat = Field(3, description="Passes over the training split (fractions allowed).")
    max_steps: PositiveInt | None = Field(None, description="Optimizer steps to run; overrides epochs when set.")
    batch_size: PositiveInt = Field(32, description="Examples per device per forward pass.")
    eval_batch_size: PositiveInt = Field(64, description="Examples per device per evaluation batch.")
    grad_accum: PositiveInt = Field(1, description="Forward passes accumulated into one optimizer step.")
    lr: PositiveFloat = Field(5e-5, description="Peak learning rate of AdamW.")
    weight_decay: NonNegativeFloat = Field(
        0.01, description="AdamW weight decay, not applied to biases and LayerNorm weights."
    )
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW beta1 and beta2, each in [0, 1).")
    adam_eps: PositiveFloat = Field(1e-8, description="AdamW epsilon.")
    warmup: NonNegativeFloat = Field(
        0.06, description="Linear warmup: below 1 a share of the total steps, from 1 up a number of steps."
    )
    max_grad_norm: NonNegativeFloat = Field(1.0, description="Clip the gradient norm to this; 0 turns clipping off.")
    nonfinite_steps: Literal["stop", "skip"] = Field(
        "stop",
        description="A step whose loss or gradient norm is NaN or infinite: stop the run (naming the step and the "
        "last checkpoint; the weights are never updated with it), or skip it (no update, counted in the log).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Mixed precision; bf16 needs a CPU or GPU with bf16, fp16 a GPU. auto: bf16 where the hardware "
        "computes it natively (a GPU with bf16 units; a CPU with AVX512-BF16 or AMX), else fp32; recipe.yaml records "
        "the choice.",
    )
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw",
        description="adamw: torch's fused AdamW; adamw_8bit: bitsandbytes' AdamW with 8-bit states (a quarter of "
        "its memory); paged_adamw_8bit: those states in CUDA unified memory, paged to the CPU under pressure.",
    )
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning rate after warmup: linear or cosine decay to zero, or constant."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    compile: bool = Field(
        False,
        description="torch.compile the model (shapes dynamic): pays back its compilation minutes on long GPU runs; "
        "slower on CPU.",
    )
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding, faster epochs)."
    )
    eval_every: PositiveInt | Literal["epoch"] = Field(
        "epoch", description="Evaluate every N optimizer steps, or at the end of each epoch."
    )
    save_every: PositiveInt | Literal["epoch", "eval"] = Field(
        "eval", description="Write a resumable checkpoint every N steps, each epoch, or at each evaluation."
    )
    keep_checkpoints: PositiveInt = Field(1, description="Resumable checkpoints kept on disk (the newest).")
    select_best: bool = Field(
        True, description="End with the weights of the best evaluation on the first metric, not the last step."
    )
    early_stopping: EarlyStopping | None = Field(None, description="Stop early on the first metric; off when absent.")
    log_every: PositiveInt = Field(
        10, description="Write loss, lr, grad norm and throughput to log.jsonl and the trackers every N steps."
    )
    report_to: list[Tracker] = Field(
        ["tensorboard"],
        description="Experiment trackers (accelerate's) that receive every logged scalar and the recipe: event files "
        "in the run folder's tensorboard/ (tensorboard --logdir runs), wandb, mlflow, trackio; [] for none.",
    )
    seed: NonNegativeInt = Field(42, description="Seed for weights of new heads, dropout and data order.")

    @model_validator(mode="after")
    def _early_stopping_needs_evals(self) -> TrainSpec:
        if self.early_stopping is not None and not self.select_best:
            raise ValueError("train.early_stopping: needs train.select_best: true to return the best weights")
        return self

    @model_validator(mode="after")
    def _decay_below_one_per_step(self) -> TrainSpec:
        if self.lr * self.weight_decay >= 1:
            raise ValueError(
                f"train.weight_decay: {self.weight_decay:g} x train.lr {self.lr:g} shrinks every weight past zero at "
                "each step; keep lr x weight_decay below 1 (0.01 to 0.1 is usual)"
            )
        return self


class GenerationSpec(Section):
    """How seq2seq models write their outputs at evaluation and prediction (transformers' `generate`)."""

    max_new_tokens: PositiveInt = Field(128, description="Most tokens generated per example.")
    num_beams: PositiveInt = Field(1, description="Beam search width; 1 is greedy decoding.")
    length_penalty: float = Field(
        1.0, description="Beam search: exponent on the length in the score; above 1 favours longer outputs."
    )
    no_repeat_ngram_size: NonNegativeInt = Field(0, description="Never repeat an n-gram of this size; 0 is off.")

    @model_validator(mode="after")
    def _penalty_needs_beams(self) -> GenerationSpec:
        if self.length_penalty != 1.0 and self.num_beams == 1:
            raise ValueError("generation.length_penalty: only beam search reads it; set generation.num_beams above 1")
        return self


class PeftSpec(Section):
    """Parameter-efficient fine-tuning through peft: a frozen base, small trained adapters."""

    method: Literal["lora"] = Field("lora", description="The adapter type; LoRA (with rsLoRA and DoRA variants).")
    r: PositiveInt = Field(8, description="LoRA rank: capacity against size.")
    alpha: PositiveFloat = Field(16, description="LoRA scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    target_modules: list[str] | None = Field(
        None,
        description="Module names (or name endings) that get adapters; default: the attention and MLP projections "
        "of the architecture (BERT, ELECTRA, GPT-2, Llama-style, T5, BART), or all-linear for others.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r), steadier at large ranks.")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its direction.")
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Further modules trained in full and saved with the adapter; the task head (and a decoder's "
        "added GPT-1 token embeddings) always are.",
    )


class QuantizeSpec(Section):
    """Load the frozen base in 4 or 8 bits through bitsandbytes (QLoRA, LLM.int8); needs a peft section."""

    bits: Literal[4, 8] = Field(description="4 (NF4 or FP4, QLoRA) or 8 (LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's.")
    double_quant: bool = Field(True, description="4-bit: quantise the quantisation constants too (QLoRA).")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="4-bit: dtype of the matrix products; auto follows train.precision."
    )

    @model_validator(mode="after")
    def _four_bit_options(self) -> QuantizeSpec:
        if self.bits == 8 and self.quant_type != "nf4":
            raise ValueError(f"quantize.quant_type: {self.quant_type} is a 4-bit data type; 8-bit layers are LLM.int8")
        return self


class HubSpec(Section):
    """Where `finetune push` (or the end of training, with push: true) uploads the result."""

    repo: str = Field(description="Hub repository, user/name or org/name.")
    push: bool = Field(False, description="Push at the end of training.")
    private: bool = Field(False, description="Create the repository as private.")
    merged: bool = Field(False, description="Push the merged full model instead of the adapter.")

    @model_validator(mode="after")
    def _repo_is_an_id(self) -> HubSpec:
        parts = self.repo.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"hub.repo: {self.repo!r} is not a repository id such as you/sst2-minilm-lora")
        return self


class Recipe(Section):
    """A complete fine-tuning job."""

    name: str = Field(
        "run",
        description="Run name; a recipe file's name when read from one. Runs go to runs/<name>/<timestamp>.",
    )
    description: str = Field("", description="What this recipe is for, in a sentence.")
    model: ModelSpec = Field(description="The pretrained checkpoint; a string is shorthand for model.name.")
    task: TaskSpec = Field(description="The task type, the columns it reads and its own settings, by type.")
    data: DataSpec = Field(description="The dataset.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="The training loop.")
    peft: PeftSpec | None = Field(
        None, description="Train adapters (LoRA) on a frozen base; full fine-tuning when absent."
    )
    quantize: QuantizeSpec | None = Field(None, description="Load the frozen base in 4 or 8 bits; needs peft.")
    hub: HubSpec | None = Field(None, description="The Hub repository to push to.")
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="seq2seq: decoding at evaluation and prediction."
    )
    output_dir: str | None = Field(None, description="Run folder; default runs/<name>/<timestamp>.")

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, values: object) -> object:
        if isinstance(values, dict) and isinstance(values.get("model"), str):
            return {**values, "model": {"name": values["model"]}}
        return values

    @model_validator(mode="after")
    def _name_is_one_folder(self) -> Recipe:
        if self.name in (".", "..", "") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"name: {self.name!r} is not a folder name; runs go to runs/<name>/<timestamp>")
        return self

    @model_validator(mode="after")
    def _quantized_base_trains_adapters(self) -> Recipe:
        if self.quantize is not None and self.peft is None:
            raise ValueError(
                "quantize: a quantised base cannot be trained itself; add a peft section (QLoRA: peft: {r: 16})"
            )
        if self.quantize is not None and self.model.init == "random":
            raise ValueError("quantize: model.init: random has no pretrained weights to quantise")
        return self

    @model_validator(mode="after")
    def _adapters_need_a_saved_base(self) -> Recipe:
        if self.peft is not None and (self.model.init == "random" or self.model.pretrained_layers is not None):
            key = "model.init" if self.model.init == "random" else "model.pretrained_layers"
            raise ValueError(
                f"{key}: adapters train on a pretrained base that is not saved; fine-tune in full (no peft)"
            )
        if self.hub is not None and self.hub.merged and self.peft is None:
            raise ValueError("hub.merged: only adapter runs are merged; a full fine-tune is pushed as it is")
        return self

    @model_validator(mode="after")
    def _generation_settings_need_generation(self) -> Recipe:
        # compared with the defaults, since a run's recipe.yaml spells every setting out
        if not self.task.generates:
            if self.generation != GenerationSpec():
                raise ValueError(f"generation: task type {self.task.type} does not generate text; remove the section")
            if self.data.max_target_length != DataSpec.model_fields["max_target_length"].default:
                raise ValueError(f"data.max_target_length: task type {self.task.type} has no target text")
        return self

    @model_validator(mode="after")
    def _mixture_for_the_task(self) -> Recipe:
        kind = self.task.type
        if self.task.reads_mixture != (self.data.mixture is not None):
            if self.data.mixture is not None:
                raise ValueError(f"data.mixture: task type {kind} reads data.source or data.files, not a mixture")
            raise ValueError(f"data.mixture: task type {kind} reads its sources from data.mixture")
        if self.data.packing is True and not self.task.packs:
            raise ValueError(f"data.packing: task type {kind} has no examples to pack (seq2seq and instruction do)")
        return self

    @model_validator(mode="after")
    def _student_from_its_teacher(self) -> Recipe:
        if self.model.init_from_teacher is None:
            return self
        if self.task.type != "distillation":
            raise ValueError("model.init_from_teacher: only a distillation task has a teacher")
        if self.model.name != self.task.teacher:
            raise ValueError(
                f"model.init_from_teacher: the student is built from the teacher; set model.name to task.teacher "
                f"({self.task.teacher})"
            )
        if self.model.init == "random" or self.model.pretrained_layers is not None or self.peft is not None:
            raise ValueError(
                "model.init_from_teacher: the student keeps the teacher's weights; remove model.init, "
                "model.pretrained_layers and peft"
            )
        return self

    @model_validator(mode="after")
    def _stream_has_an_end(self) -> Recipe:
        if self.data.streaming and self.train.max_steps is None:
            raise ValueError(
                "train.max_steps: a streamed training split has no length to count epochs in; set the steps to run"
            )
        if self.data.streaming and getattr(self.task, "cache_teacher", False):
            raise ValueError(
                "task.cache_teacher: caching the teacher's logits reads the whole training split; with "
                "data.streaming set it to false (the teacher then scores each batch)"
            )
        return self

    @model_validator(mode="after")
    def _eval_split_differs(self) -> Recipe:
        if self.data.eval_split == self.data.train_split:
            raise ValueError("data.eval_split: evaluating on the training split measures nothing; name another split")
        return self
