"""The `finetune` command: parses arguments and dispatches; the work happens in pipeline.py and friends.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`finetune validate` and `finetune recipe --schema` answer in about a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from finetune.errors import EXIT_USER_ERROR, FinetuneError, Interrupted, SaveFailed, redact
from finetune.stopping import die_with_launcher

EXAMPLES = {
    "train": """examples:
  finetune train recipes/glue/sst2-minilm.yaml
  finetune train recipes/glue/rte-minilm.yaml train.epochs=1 train.lr=3e-5 data.max_train_samples=500
  finetune train recipes/glue/sst2-minilm.yaml output_dir=runs/sst2 --resume""",
    "eval": """examples:
  finetune eval runs/sst2-minilm/20261122-160000
  finetune eval runs/sst2-minilm/20261122-160000/checkpoints/step-500 --split validation
  finetune eval recipes/smollm2/copa-smollm2.yaml --zero-shot
  finetune eval recipes/smollm2/rte-smollm2.yaml --zero-shot data.max_eval_samples=200
  finetune eval recipes/seq2seq/dialogsum-smollm2.yaml --zero-shot --predictions dialogsum.jsonl""",
    "sweep": """examples:
  finetune sweep recipes/glue/sst2-minilm.yaml --fractions 0.003,0.01,0.03,0.1 --seeds 3
  finetune sweep recipes/glue/rte-minilm.yaml --fractions 1 --seeds 3 --set train.lr=2e-5,5e-5,1e-4 --jobs 2
  (run the same command again to finish an interrupted sweep: finished cells are read back)""",
    "validate": """examples:
  finetune validate recipes/glue/*.yaml
  finetune validate recipes/glue/rte-minilm.yaml --set train.lr=1e-4
  finetune validate recipes/glue/rte-minilm.yaml --tokens   # how many examples data.max_length cuts""",
    "inspect": """examples:
  finetune inspect recipes/glue/mrpc-minilm.yaml -n 3
  finetune inspect recipes/glue/cola-minilm.yaml --split validation""",
    "predict": """examples:
  finetune predict runs/sst2-minilm/20261122-160000 --input reviews.jsonl --output predictions.jsonl""",
    "merge": """examples:
  finetune merge runs/sst2-minilm-lora/20261201-190000 merged/sst2-minilm""",
    "push": """examples:
  finetune push runs/sst2-minilm-lora/20261201-190000 --repo you/sst2-minilm-lora
  finetune push runs/sst2-minilm-lora/20261201-190000 --repo you/sst2-minilm --merged --private
  (the token: `hf auth login`, or HF_TOKEN in the environment; it is never printed)""",
    "recipe": """examples:
  finetune recipe --schema > docs/recipe.md""",
}


@dataclass
class CliResult:
    """What a command produced, for callers (tests) that run the CLI in-process."""

    exit_code: int
    metrics: dict[str, Any] | None = None
    run_dir: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune", description="Fine-tune pretrained checkpoints from YAML recipes.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    train = command("train", "Train a model from a recipe; key.path=value arguments override the recipe.")
    train.add_argument("recipe", type=Path)
    train.add_argument("overrides", nargs="*", metavar="key.path=value")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's newest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty run folder")

    sweep = command("sweep", "Train a recipe over training-set fractions x seeds x settings; write the learning curve.")
    sweep.add_argument("recipe", type=Path)
    sweep.add_argument("overrides", nargs="*", metavar="key.path=value", help="applied to every cell")
    sweep.add_argument("--fractions", default="1", help="shares of the training split, e.g. 0.01,0.1,1 (default 1)")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per cell, counted from train.seed (default 1)")
    sweep.add_argument(
        "--set", dest="grid", action="append", default=[], metavar="key.path=v1,v2", help="a setting's values"
    )
    sweep.add_argument("--jobs", type=int, default=1, help="cells trained at once, as processes (default 1)")
    sweep.add_argument("--output", type=Path, help="the sweep folder (default runs/<recipe name>/sweep)")
    sweep.add_argument("--zero-shot", action="store_true", help="also score the base model zero-shot (decoders, T5)")

    evaluate = command(
        "eval",
        "Evaluate a run folder or checkpoint on its recipe's evaluation split, or (--zero-shot) "
        "a recipe's base decoder without training.",
    )
    evaluate.add_argument("run_dir", type=Path, help="a run folder or checkpoint; with --zero-shot, a recipe")
    evaluate.add_argument("--split", help="split to evaluate instead of data.eval_split")
    evaluate.add_argument(
        "--zero-shot",
        action="store_true",
        help="score the recipe's base checkpoint by the log-probabilities of the answers",
    )
    evaluate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="key.path=value", help="with --zero-shot"
    )
    evaluate.add_argument(
        "--predictions",
        type=Path,
        help="with --zero-shot on a seq2seq or instruction recipe: write the generated texts here (jsonl) instead of "
        "into the results folder",
    )
    evaluate.add_argument(
        "--output",
        type=Path,
        help="with --zero-shot: the results folder (default runs/<recipe name>/zero-shot-<timestamp>)",
    )

    validate = command("validate", "Check recipes, their data and model configs without loading weights.")
    validate.add_argument("recipes", nargs="+", type=Path)
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.path=value")
    validate.add_argument(
        "--tokens",
        action="store_true",
        help="also format and tokenize the splits and count what data.max_length cuts (loads the tokenizer)",
    )

    inspect = command("inspect", "Print formatted examples as the model sees them: tokens, layout, label.")
    inspect.add_argument("recipe", type=Path)
    inspect.add_argument("overrides", nargs="*", metavar="key.path=value")
    inspect.add_argument("-n", type=int, default=5, help="number of examples (default 5)")
    inspect.add_argument("--split", choices=["train", "eval"], default="train")

    predict = command(
        "predict", "Predict labels (with probabilities) or scores for a jsonl, json, csv, tsv or parquet file."
    )
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("--input", required=True, type=Path)
    predict.add_argument("--output", type=Path, help="write predictions here as jsonl (default: print them)")

    merge = command("merge", "Fold a LoRA run's adapter into its base and save the full model (dequantised).")
    merge.add_argument("run_dir", type=Path)
    merge.add_argument("out_dir", type=Path)

    push = command("push", "Upload a run's adapter (or merged model) with its model card to the Hugging Face Hub.")
    push.add_argument("run_dir", type=Path)
    push.add_argument("--repo", help="user/name or org/name (default: the recipe's hub.repo)")
    push.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    push.add_argument("--merged", action="store_true", default=None, help="push the merged full model")

    recipe = command("recipe", "Print the recipe reference generated from the schema.")
    recipe.add_argument("--schema", action="store_true", required=True)
    return parser


def run(argv: list[str]) -> CliResult:
    """Run one command; user errors are printed one per line to stderr with exit code 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after flags (`train r.yaml --overwrite train.lr=1e-4`); argparse stops at the flag.
    if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging()
    try:
        return COMMANDS[args.command](args)
    except Interrupted as exc:
        print(f"stopped: {exc.problems[0]}", file=sys.stderr)
        print(f"continue with: {_resume_command(args, exc.run_dir)}", file=sys.stderr)
        return CliResult(exc.exit_code)
    except SaveFailed as exc:
        print(f"error: {exc.problems[0]}", file=sys.stderr)
        if exc.run_dir is not None:
            print(f"continue with: {_resume_command(args, exc.run_dir)}", file=sys.stderr)
        return CliResult(EXIT_USER_ERROR)
    except FinetuneError as exc:
        for problem in exc.problems:
            print(f"error: {redact(problem)}", file=sys.stderr)
        return CliResult(EXIT_USER_ERROR)
    except KeyboardInterrupt:  # before training started or after it ended: nothing to checkpoint
        print(f"error: {args.command} interrupted", file=sys.stderr)
        return CliResult(128 + signal.SIGINT)


def _resume_command(args: argparse.Namespace, run_dir: str) -> str:
    """The command that continues an interrupted run exactly: its recipe and overrides, its folder and --resume."""
    overrides = [o for o in args.overrides if not o.startswith("output_dir=")]
    words = ["finetune", "train", str(args.recipe), *overrides, f"output_dir={run_dir}", "--resume"]
    return " ".join(shlex.quote(word) for word in words)


def main() -> None:
    die_with_launcher()
    sys.excepthook = _redacted_traceback
    sys.exit(run(sys.argv[1:]).exit_code)


def _redacted_traceback(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """A bug's traceback as Python prints it, less any token a message carried."""
    print(redact("".join(traceback.format_exception(kind, exc, tb))), end="", file=sys.stderr)


def _train(args: argparse.Namespace) -> CliResult:
    from finetune.recipe import load_recipe
    from finetune.validate import check

    recipe = load_recipe(args.recipe, args.overrides)
    check(recipe).raise_for_problems()  # before torch loads: a bad recipe fails in a second

    from finetune.pipeline import train

    result = train(recipe, overwrite=args.overwrite, resume=args.resume)
    print(_metrics_line(result.metrics))
    print(f"run folder: {result.run_dir}")
    return CliResult(0, result.metrics, result.run_dir)


def _sweep(args: argparse.Namespace) -> CliResult:
    from finetune.sweep import run_sweep
    from finetune.sweep_report import table

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise FinetuneError(f"--fractions: comma-separated numbers, e.g. 0.01,0.1,1 (got {args.fractions})") from None
    if args.jobs < 1:
        raise FinetuneError("--jobs: at least one")
    report = run_sweep(
        args.recipe, args.overrides, fractions, args.seeds, args.grid, args.output, args.jobs, args.zero_shot
    )
    print(table(report), end="")
    return CliResult(0)


def _eval(args: argparse.Namespace) -> CliResult:
    if args.zero_shot:
        from finetune.recipe import load_recipe
        from finetune.rundir import check_writable
        from finetune.zeroshot import zero_shot

        recipe = load_recipe(args.run_dir, args.overrides, evaluate_only=True)
        folder = args.output or Path("runs") / recipe.name / datetime.now().strftime("zero-shot-%Y%m%d-%H%M%S")
        check_writable(folder, "--output", folder=True)
        metrics = zero_shot(recipe, args.split, folder, predictions_path=args.predictions)
        print(_metrics_line(metrics))
        tasks = (args.predictions or folder / "predictions.jsonl").with_suffix(".tasks.md")
        if tasks.is_file():  # held-out tasks, one row each
            print(tasks.read_text(encoding="utf-8"), end="")
        print(f"results: {folder}")
        return CliResult(0, metrics, folder)
    from finetune.pipeline import evaluate_run

    if args.overrides or args.predictions or args.output:
        raise FinetuneError(
            "eval: key.path=value overrides and --predictions apply with --zero-shot; a run is scored as it was "
            "trained and writes predictions_<split>.jsonl into its folder"
        )
    metrics = evaluate_run(args.run_dir, args.split)
    print(_metrics_line(metrics))
    return CliResult(0, metrics, args.run_dir)


def _validate(args: argparse.Namespace) -> CliResult:
    from finetune.recipe import load_recipe
    from finetune.validate import check

    failed = False
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.overrides)
            report = check(recipe)
            problems, notes = report.problems, report.notes
            if args.tokens and not problems:
                from finetune.prepare import truncation_notes

                notes = notes + truncation_notes(recipe, report)
        except FinetuneError as exc:
            problems, notes = exc.problems, []
        for problem in problems:
            print(problem if problem.startswith(str(path)) else f"{path}: {problem}", file=sys.stderr)
        for note in notes:
            print(f"{path}: note: {note}")
        if not problems:
            print(f"{path}: ok")
        failed = failed or bool(problems)
    return CliResult(EXIT_USER_ERROR if failed else 0)


def _inspect(args: argparse.Namespace) -> CliResult:
    from finetune.inspection import render_example
    from finetune.prepare import checked, prepare
    from finetune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    ready = prepare(recipe, checked(recipe), keep_lengths=True)
    for index, row in enumerate(ready.splits[args.split].take(args.n)):  # a streamed split: its first rows
        print(render_example(index, row, ready.tokenizer, ready.task), end="\n\n")
    return CliResult(0)


def _predict(args: argparse.Namespace) -> CliResult:
    import json

    from finetune.pipeline import predict

    records = predict(args.run_dir, args.input, args.output)
    if args.output is None:
        for record in records:
            print(json.dumps(record))
    else:
        print(f"{len(records)} predictions written to {args.output}")
    return CliResult(0)


def _merge(args: argparse.Namespace) -> CliResult:
    from finetune.export import merge_run

    print(f"merged model: {merge_run(args.run_dir, args.out_dir)}")
    return CliResult(0, run_dir=args.out_dir)


def _push(args: argparse.Namespace) -> CliResult:
    from finetune.export import push_run

    print(f"pushed: {push_run(args.run_dir, args.repo, args.private, args.merged)}")
    return CliResult(0, run_dir=args.run_dir)


def _recipe(args: argparse.Namespace) -> CliResult:
    from finetune.recipe.reference import schema_markdown

    print(schema_markdown(), end="")
    return CliResult(0)


COMMANDS = {
    "train": _train,
    "sweep": _sweep,
    "eval": _eval,
    "validate": _validate,
    "inspect": _inspect,
    "predict": _predict,
    "merge": _merge,
    "push": _push,
    "recipe": _recipe,
}


def _metrics_line(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"), format="[finetune] %(message)s", stream=sys.stderr
    )
    for noisy in (
        "transformers",
        "datasets",
        "accelerate",
        "evaluate",
        "httpx",
        "huggingface_hub",
        "bitsandbytes",
        "matplotlib",
    ):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
