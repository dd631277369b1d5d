"""TRL SFTTrainer LoRA supervised fine-tuning on a JSONL in TRL's conversational prompt-completion format
(`{"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}`, the loss on the completion
only, TRL's default for that format); the eval loss on an eval JSONL at the end. Bench-only: TRL is no
dependency of the project.

Usage: python bench/baselines/trl_sft.py --model DIR --train JSONL --eval JSONL --out RESULT.json
       [--max-length 512] [--batch-size 8] [--lr 2e-4] [--epochs 1] [--seed 42] [--packing]
fp32; TRL's defaults otherwise (gradient checkpointing on, as SFTConfig sets it); --packing is packing=True with
TRL's default strategy (best-fit decreasing, padding-free batches).
"""

from __future__ import annotations

import time

import torch
from common import parser, train_counted, trainer_dir, write_result
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    flags = parser(__doc__.splitlines()[0], batch_size=8, lr=2e-4)
    flags.add_argument("--max-length", type=int, default=512)
    flags.add_argument("--packing", action="store_true")
    args = flags.parse_args()
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = SFTConfig(
        output_dir=trainer_dir(args.out),
        max_length=args.max_length,
        packing=args.packing,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        seed=args.seed,
        bf16=False,  # SFTConfig defaults to bf16 unless fp16 is set
        warmup_steps=0,
        weight_decay=0.0,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")

    start = time.perf_counter()  # loading, then SFTTrainer's own preparation: chat template, tokenizing, packing
    raw = load_dataset("json", data_files={"train": args.train, "eval": args.eval})
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=raw["train"],
        eval_dataset=raw["eval"],
        processing_class=tokenizer,
        peft_config=lora,
    )
    data_seconds = time.perf_counter() - start

    counting, trained = train_counted(trainer)
    metrics = trainer.evaluate()
    write_result(
        args,
        "trl",
        "packing" if args.packing else "default",
        len(raw["train"]),
        trainer.state.global_step,
        trained["train_runtime"],
        counting,
        data_seconds,
        {
            "eval_loss": metrics["eval_loss"],
            "eval_mean_token_accuracy": metrics.get("eval_mean_token_accuracy"),
            "train_rows": len(trainer.train_dataset),  # packed sequences with --packing
            "gradient_checkpointing": config.gradient_checkpointing,
        },
    )


if __name__ == "__main__":
    main()
