"""Plain Hugging Face Trainer fine-tuning of a sequence classifier on a TSV (`sentence\tlabel`), the way
transformers' examples/pytorch/text-classification/run_glue.py does it; accuracy on the eval file at the end.

Usage: python bench/baselines/hf_glue.py --mode defaults|best --model DIR --train TSV --eval TSV --out RESULT.json
       [--max-length 128] [--batch-size 32] [--lr 5e-5] [--epochs 1] [--seed 42] [--bf16] [--max-train N]
--mode defaults is run_glue.py's: every row padded to --max-length, random sampler, default collator;
--mode best pads each batch to its longest row (DataCollatorWithPadding) and groups rows of similar length.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import parser, train_counted, trainer_dir, write_result
from datasets import load_dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}


def main() -> None:
    flags = parser(__doc__.splitlines()[0], batch_size=32, lr=5e-5)
    flags.add_argument("--mode", choices=["defaults", "best"], required=True)
    flags.add_argument("--max-length", type=int, default=128)
    flags.add_argument("--bf16", action="store_true")
    flags.add_argument("--max-train", type=int, help="train on the first N rows only")
    args = flags.parse_args()
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    padding, max_length = ("max_length" if args.mode == "defaults" else False), args.max_length

    start = time.perf_counter()
    raw = load_dataset("csv", delimiter="\t", data_files={"train": args.train, "validation": args.eval})
    if args.max_train:
        raw["train"] = raw["train"].select(range(min(args.max_train, len(raw["train"]))))

    def tokenize(batch: dict[str, list]) -> dict[str, list]:  # its closure is hashed for the cache: no `args` in it
        return tokenizer(batch["sentence"], padding=padding, max_length=max_length, truncation=True)

    data = raw.map(tokenize, batched=True, desc="Running tokenizer on dataset")
    data_seconds = time.perf_counter() - start

    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(raw["train"].unique("label")))
    training = TrainingArguments(
        output_dir=trainer_dir(args.out),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        seed=args.seed,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),  # bf16 on a CPU needs it said
        weight_decay=0.0,
        warmup_steps=0,
        max_grad_norm=1.0,
        train_sampling_strategy="group_by_length" if args.mode == "best" else "random",
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator if args.mode == "defaults" else DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    counting, trained = train_counted(trainer)
    metrics = trainer.evaluate()
    write_result(
        args,
        "trainer",
        args.mode + ("-bf16" if args.bf16 else ""),
        len(data["train"]),
        trainer.state.global_step,
        trained["train_runtime"],
        counting,
        data_seconds,
        {"accuracy": metrics["eval_accuracy"], "eval_loss": metrics["eval_loss"]},
    )


if __name__ == "__main__":
    main()
