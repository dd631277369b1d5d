"""Zero-shot scoring of a base decoder, GPT-1's heuristics: no fine-tuning, the language model's own
log-probabilities of each answer's continuation decide.

- multiple choice: the context, then each candidate as a continuation;
- classification and entailment: the recipe's `task.prompt_template` filled from the row, then each class's
  `task.verbalizer` word.

Three scores pick an answer, each reported as an accuracy: the mean log-probability per continuation token
(`accuracy`, with the recipe's other metrics such as F1 for MRPC), and lm-evaluation-harness's two, so that our
figures sit beside published ones: the sum (`acc`) and the sum over the candidate's length in characters
(`acc_norm`).

A text-to-text encoder-decoder (T5, Flan-T5) is scored the way it is evaluated after fine-tuning: the sum of
each target's log-probabilities given the source (the task prefix and fields, see tasks/text_to_text.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from finetune import data
from finetune.accelerator import make_accelerator
from finetune.errors import FinetuneError
from finetune.evaluation import evaluator
from finetune.fields import fill_template
from finetune.gguf_models import local_checkpoint
from finetune.loaded_run import LoadedRun
from finetune.metrics import compute_metrics, f1_setting
from finetune.model import load_tokenizer
from finetune.prepare import prepare, settle_architecture
from finetune.recipe import Recipe, dump_recipe
from finetune.rundir import METRICS_FILE, RECIPE_FILE, write_json
from finetune.validate import Report, check


def zero_shot(
    recipe: Recipe,
    split: str | None = None,
    folder: Path | None = None,
    predictions_path: Path | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Score the recipe's base checkpoint on its evaluation split (or `split`) without training. With `folder`,
    write there the metrics, the resolved recipe and what a seq2seq or instruction model generates (with a table
    per held-out task), unless `predictions_path` names another file for the generated texts."""
    report = check(recipe, training=False)
    report.raise_for_problems()
    recipe, family = settle_architecture(recipe, report)
    split = split or recipe.data.eval_split
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        predictions_path = predictions_path or folder / "predictions.jsonl"
    metrics = _score(recipe, report, family, split, predictions_path, batch_size)
    if folder is not None:
        write_json(folder / METRICS_FILE, metrics)
        (folder / RECIPE_FILE).write_text(dump_recipe(recipe), encoding="utf-8")
    return metrics


def _score(
    recipe: Recipe, report: Report, family: str, split: str, predictions_path: Path | None, batch_size: int
) -> dict[str, float]:
    if recipe.task.text_to_text or recipe.task.predicts in ("text", "tokens"):  # scored as after training
        return _zero_shot_as_trained(recipe, report, split, predictions_path)
    if family != "decoder":
        raise FinetuneError(
            f"model.name: zero-shot scoring reads a language model's log-probabilities; "
            f"{recipe.model.name} is {family}, without a language-modelling head"
        )
    raw = data.load_raw(recipe.data, {"eval": split})
    data.check_columns(raw, recipe.task)
    rows = list(data.cap_splits(raw, recipe.data, recipe.train.seed)["eval"])
    questions = [options_of(row, recipe, number) for number, row in enumerate(rows)]
    tokenizer = load_tokenizer(recipe.model, report.model)
    safe = None if recipe.model.allow_pickle else True
    model = AutoModelForCausalLM.from_pretrained(local_checkpoint(report.model), use_safetensors=safe).eval()
    pairs = [(prompt, continuation) for prompt, continuations, _ in questions for continuation in continuations]
    sums, counts = continuation_logprobs(model, tokenizer, pairs, batch_size)
    picks = choose(sums, counts, [continuations for _, continuations, _ in questions])
    normalised, answers = picks["accuracy"], [answer for _, _, answer in questions]
    classes = (recipe.task.labels or list(recipe.task.verbalizer)) if recipe.task.has_classes else None
    try:  # the classes in the order the answers index them
        f1 = f1_setting(recipe.task, classes, candidates=max(len(c) for _, c, _ in questions))
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None
    metrics = compute_metrics(recipe.task.metric_names, normalised, answers, f1)  # e.g. f1 for MRPC, on normalised
    for name, picked in picks.items():
        metrics[name] = float(np.mean(np.array(picked) == answers))
    return {**{k: round(v, 6) for k, v in metrics.items()}, "num_examples": len(questions)}


def _zero_shot_as_trained(
    recipe: Recipe, report: Report, split: str, predictions_path: Path | None
) -> dict[str, float]:
    """The base model scored by the evaluation its fine-tuned runs get: text to text, generation, perplexity."""
    ready = prepare(recipe, report, splits={"eval": split})  # as training prepares it
    recipe, task, tokenizer, tokenized = ready.recipe, ready.task, ready.tokenizer, ready.splits["eval"]
    accelerator = make_accelerator(recipe.train)
    safe = None if recipe.model.allow_pickle else True
    model = accelerator.prepare(task.model_class.from_pretrained(local_checkpoint(report.model), use_safetensors=safe))
    run = LoadedRun(recipe, task, tokenizer, model, accelerator)  # the base model, loaded as a run would be
    score = evaluator(task, accelerator, tokenizer, recipe.generation, tokenized, lambda _: predictions_path)
    metrics = score(run.model, run.loader(tokenized))
    return {**metrics, "num_examples": len(tokenized)}


def choose(sums: np.ndarray, counts: np.ndarray, continuations: list[list[str]]) -> dict[str, list[int]]:
    """Each question's pick (its continuations' log-probability sums and token counts laid end to end), three
    ways: `accuracy` by the mean log-probability per token; lm-evaluation-harness's `acc` by the sum and
    `acc_norm` by the sum over the candidate's length in characters (its text without the space before it)."""
    picks: dict[str, list[int]] = {"accuracy": [], "acc": [], "acc_norm": []}
    start = 0
    for texts in continuations:
        total, tokens = sums[start : start + len(texts)], counts[start : start + len(texts)]
        chars = np.array([float(len(t.removeprefix(" "))) for t in texts])
        picks["accuracy"].append(int(np.argmax(total / tokens)))
        picks["acc"].append(int(np.argmax(total)))
        picks["acc_norm"].append(int(np.argmax(total / chars)))
        start += len(texts)
    return picks


def options_of(row: dict[str, Any], recipe: Recipe, number: int) -> tuple[str, list[str], int]:
    """(prompt, continuations, index of the right one) for one row."""
    task = recipe.task
    if task.predicts == "candidate":
        texts, _ = task.candidates_of(row)
        return task.context_of(row), [f" {text}" for text in texts], task.encode_label(row, None, number)
    if not task.has_classes or not task.verbalizer or not task.prompt_template:
        raise FinetuneError(
            "task.verbalizer: zero-shot classification needs task.prompt_template and a "
            "task.verbalizer word for each class (multiple choice needs neither)"
        )
    labels = task.labels or list(task.verbalizer)
    prompt = fill_template(task.prompt_template, row, "task.prompt_template")
    return prompt, [task.verbalizer[name] for name in labels], task.encode_label(row, labels, number)


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of log p(continuation tokens | prompt) and the number of those tokens, for each (prompt, continuation)."""
    sums, counts = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="zero-shot", unit="batch"):  # with the time left
        encoded = [
            (tokenizer(p)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
            for p, c in pairs[start : start + batch_size]
        ]
        width = max(len(p) + len(c) for p, c in encoded)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([p + c + [pad] * (width - len(p) - len(c)) for p, c in encoded])  # (B, L), right-padded
        mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in encoded])
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)  # (B, L, V)
        for row, (p, c) in enumerate(encoded):
            positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)  # each continuation token's predicting position
            sums.append(logprobs[row, positions, torch.tensor(c)].sum().item())
            counts.append(len(c))
    return np.array(sums), np.array(counts)
