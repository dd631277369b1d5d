"""Run GLUE recipes to completion and record metric, time and hardware under bench/results/.

Usage: python bench/glue.py [RECIPE ...]   (default: the five MiniLM GLUE recipes)
       python bench/glue.py --table        (only rewrite bench/results/glue.md from the stored results)
Each recipe runs as `finetune train RECIPE output_dir=runs/bench/<name> --overwrite`, one after another.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from finetune.mirrors import PACKAGED_MODELS

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [f"recipes/glue/{t}-minilm.yaml" for t in ("sst2", "cola", "mrpc", "stsb", "rte")]
SMOLLM2 = "packaged:SmolLM2-135M-Instruct-Q4_1"  # the decoder the SmolLM2 recipes name
SMOLLM2_NOTE = f"SmolLM2 here is `{SMOLLM2}`: {PACKAGED_MODELS[SMOLLM2].about}."


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def bench_main(argv: list[str], known: list[str], execute, results: Path, table_path: Path, table) -> None:
    """A benchmark script's command line: `--table` rewrites the table from stored results; otherwise run the
    given keys (all known ones by default) in that order, storing each result as `results/<key>.json` and
    rewriting the table after each."""
    if argv == ["--table"]:
        table_path.write_text(table())
        return
    results.mkdir(parents=True, exist_ok=True)
    unknown = [key for key in argv if key not in known]
    if unknown:
        raise SystemExit(f"unknown run keys: {', '.join(unknown)}")
    for key in argv or known:
        result = execute(key)
        (results / f"{key}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)
        table_path.write_text(table())


def parse_metrics_line(stdout: str) -> dict:
    """The CLI's last line, `accuracy 0.56  acc 0.65  acc_norm 0.6  num_examples 100`, as numbers."""
    parts = stdout.strip().splitlines()[-1].split()
    return {name: float(value) for name, value in zip(parts[::2], parts[1::2])}


def run_finetune(arguments: list[str], name: str) -> tuple[str, float, str]:
    """Run the `finetune` CLI of this checkout: its stdout, wall seconds and the command as a line."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "finetune"), *arguments], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    command = " ".join(["finetune", *(a if " " not in a else repr(a) for a in arguments)])
    return done.stdout, time.perf_counter() - start, command


def run(recipe: str) -> dict:
    name = Path(recipe).stem
    out = REPO / "runs" / "bench" / name
    command = ["finetune", "train", recipe, f"output_dir={out.relative_to(REPO)}", "--overwrite"]
    start = time.perf_counter()
    subprocess.run([str(REPO / ".venv" / "bin" / command[0]), *command[1:]], cwd=REPO, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"recipe": recipe, "command": " ".join(command), "wall_s": round(wall, 1), "hardware": hardware(), **metrics}


def table(results_dir: Path) -> str:
    """A Markdown table of every stored GLUE result: the recipe's metrics, times, hardware and command."""
    from finetune.recipe import load_recipe

    lines = [
        "| recipe | metric | dev value | train time | wall time | train samples | hardware | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if "recipe" not in result or not result["recipe"].startswith("recipes/glue/"):
            continue
        names = load_recipe(REPO / result["recipe"]).task.metric_names
        metrics = ", ".join(f"{name} {result[name]:.4f}" for name in names)
        lines.append(
            f"| `{result['recipe']}` | {', '.join(names)} | {metrics} | {result['train_runtime_s'] / 60:.1f} min"
            f" | {result['wall_s'] / 60:.1f} min | {result['num_train_samples']} | {result['hardware']}"
            f" | `{result['command']}` |"
        )
    return "\n".join(lines) + "\n"


def main(recipes: list[str]) -> None:
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for recipe in recipes:
        result = run(recipe)
        (results_dir / f"{Path(recipe).stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
    (results_dir / "glue.md").write_text(table(results_dir))


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        (REPO / "bench" / "results" / "glue.md").write_text(table(REPO / "bench" / "results"))
    else:
        main(sys.argv[1:] or DEFAULT)
