"""Seq2SeqTrainer summarisation, as transformers' examples/pytorch/summarization/run_summarization.py uses it: a JSONL
with `dialogue` and `summary` (DialogSum), T5's "summarize: " prefix, targets tokenized with `text_target=`,
DataCollatorForSeq2Seq; at the end, generation (predict_with_generate) judged by ROUGE-L and the eval loss.

Usage: python bench/baselines/hf_seq2seq.py --model DIR --train JSONL --eval JSONL --out RESULT.json
       [--max-source-length 512] [--max-target-length 128] [--max-new-tokens 64] [--batch-size 16] [--lr 3e-4]
       [--epochs 1] [--seed 42]
ROUGE-L is rouge_score's, stemmed, the F-measure averaged over examples (as finetune.metrics computes it).
"""

from __future__ import annotations

import time

import numpy as np
from common import IGNORE, parser, train_counted, trainer_dir, write_result
from datasets import load_dataset
from rouge_score import rouge_scorer
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

PREFIX = "summarize: "


def main() -> None:
    flags = parser(__doc__.splitlines()[0], batch_size=16, lr=3e-4)
    flags.add_argument("--max-source-length", type=int, default=512)
    flags.add_argument("--max-target-length", type=int, default=128)
    flags.add_argument("--max-new-tokens", type=int, default=64)
    args = flags.parse_args()
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model)

    start = time.perf_counter()
    raw = load_dataset("json", data_files={"train": args.train, "validation": args.eval})

    source_length, target_length = args.max_source_length, args.max_target_length

    def preprocess(batch: dict[str, list]) -> dict[str, list]:  # its closure is hashed for the cache: no `args` in it
        inputs = [PREFIX + text for text in batch["dialogue"]]
        encoded = tokenizer(inputs, max_length=source_length, truncation=True)
        targets = tokenizer(text_target=batch["summary"], max_length=target_length, truncation=True)
        encoded["labels"] = targets["input_ids"]
        return encoded

    data = raw.map(
        preprocess, batched=True, remove_columns=raw["train"].column_names, desc="Running tokenizer on dataset"
    )
    data_seconds = time.perf_counter() - start

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def rouge(prediction: EvalPrediction) -> dict[str, float]:
        predictions = np.where(prediction.predictions != IGNORE, prediction.predictions, tokenizer.pad_token_id)
        labels = np.where(prediction.label_ids != IGNORE, prediction.label_ids, tokenizer.pad_token_id)
        written = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        wanted = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = [scorer.score(w.strip(), p.strip())["rougeL"].fmeasure for p, w in zip(written, wanted)]
        return {"rougeL": float(np.mean(scores))}

    training = Seq2SeqTrainingArguments(
        output_dir=trainer_dir(args.out),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        seed=args.seed,
        weight_decay=0.0,
        warmup_steps=0,
        predict_with_generate=True,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=training,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE),
        compute_metrics=rouge,
    )
    counting, trained = train_counted(trainer, labels=True)
    metrics = trainer.evaluate(max_new_tokens=args.max_new_tokens)
    write_result(
        args,
        "seq2seq-trainer",
        "run_summarization",
        len(data["train"]),
        trainer.state.global_step,
        trained["train_runtime"],
        counting,
        data_seconds,
        {"rougeL": metrics["eval_rougeL"], "eval_loss": metrics["eval_loss"]},
    )


if __name__ == "__main__":
    main()
