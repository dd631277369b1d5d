"""GPT-1's task table on this machine: MiniLM-L6 and SmolLM2-135M fine-tuned and zero-shot on RTE, MRPC,
STS-B, COPA and CommonsenseQA, with GPT-1's ablations (auxiliary LM loss on/off for SmolLM2, pretrained
against random initialisation for MiniLM).

Usage: python bench/gpt1_table.py [KEY ...]   (default: every run; KEY as in RUNS, e.g. minilm-rte)
       python bench/gpt1_table.py --table     (only rewrite bench/results/gpt1-table.md from stored results)
Each run is one `finetune` command (shown in its result file) under a budget that fits 2 CPU cores:
the caps are part of the command and are printed beside each figure.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from glue import SMOLLM2_NOTE, bench_main, hardware, parse_metrics_line, run_finetune

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpt1"
TABLE = REPO / "bench" / "results" / "gpt1-table.md"

TASKS = {  # task: (MiniLM recipe, SmolLM2 recipe, reported metric)
    "rte": ("recipes/gpt1/rte-entailment-minilm.yaml", "recipes/smollm2/rte-smollm2.yaml", "accuracy"),
    "mrpc": ("recipes/gpt1/mrpc-similarity-minilm.yaml", "recipes/smollm2/mrpc-smollm2.yaml", "f1"),
    "stsb": ("recipes/gpt1/stsb-similarity-minilm.yaml", "recipes/smollm2/stsb-smollm2.yaml", "pearson"),
    "copa": ("recipes/choice/copa-minilm.yaml", "recipes/smollm2/copa-smollm2.yaml", "accuracy"),
    "commonsenseqa": (
        "recipes/choice/commonsenseqa-minilm.yaml",
        "recipes/smollm2/commonsenseqa-smollm2.yaml",
        "accuracy",
    ),
}
# 2 CPU cores: MiniLM trains on up to 2,000 examples with its recipe's epochs; SmolLM2 (135M) on 256 for one
# epoch, evaluated on the first 200 dev examples (COPA: all 100).
MINILM_CAPS = ["data.max_train_samples=2000"]
SMOLLM2_CAPS = ["data.max_train_samples=256", "train.epochs=1", "data.max_eval_samples=200"]
SMOLLM2_ZERO_SHOT_CAPS = ["data.max_eval_samples=200"]


@dataclass(frozen=True)
class Run:
    key: str
    task: str
    model: str  # MiniLM-L6 | SmolLM2-135M
    setting: str  # fine-tuned | random init | aux 0.5 | aux 0 | zero-shot
    command: list[str]


def runs() -> list[Run]:
    found = []
    for task, (minilm, smollm2, _) in TASKS.items():
        found.append(Run(f"minilm-{task}", task, "MiniLM-L6", "pretrained", ["train", minilm, *MINILM_CAPS]))
        found.append(
            Run(
                f"minilm-{task}-random",
                task,
                "MiniLM-L6",
                "random init",
                ["train", minilm, *MINILM_CAPS, "model.init=random"],
            )
        )
        found.append(Run(f"smollm2-{task}-aux", task, "SmolLM2-135M", "aux 0.5", ["train", smollm2, *SMOLLM2_CAPS]))
        found.append(
            Run(
                f"smollm2-{task}-noaux",
                task,
                "SmolLM2-135M",
                "aux 0",
                ["train", smollm2, *SMOLLM2_CAPS, "task.aux_lm_weight=0"],
            )
        )
        found.append(
            Run(
                f"smollm2-{task}-zeroshot",
                task,
                "SmolLM2-135M",
                "zero-shot",
                ["eval", smollm2, "--zero-shot", *SMOLLM2_ZERO_SHOT_CAPS],
            )
        )
    return found


def execute(run: Run) -> dict:
    out = REPO / "runs" / "bench" / "gpt1" / run.key
    command = ["finetune", *run.command]
    if run.command[0] == "train":
        command += [f"output_dir={out.relative_to(REPO)}", "--overwrite"]
    stdout, wall, line = run_finetune(command[1:], run.key)
    if run.command[0] == "train":
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = parse_metrics_line(stdout)
    return {**run.__dict__, "command": line, "wall_s": round(wall, 1), "hardware": hardware(), **metrics}


# GPT-1 (Radford et al. 2018), GLUE test sets: Table 2/3 and the ablations of Table 5.
PAPER = {
    "rte": {"full": 56.0, "no pretraining": 53.8, "no aux LM": 54.4},
    "mrpc": {"full": 82.3, "no pretraining": 79.4, "no aux LM": 84.9},
    "stsb": {"full": 82.0, "no pretraining": 30.9, "no aux LM": 83.2},
}
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "pearson": "Pearson"}


def table() -> str:
    """The Markdown table of every stored result, one row per task, with GPT-1's figures beside."""
    stored = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    settings = [
        ("minilm-{}", "MiniLM-L6 fine-tuned"),
        ("minilm-{}-random", "MiniLM-L6 random init"),
        ("smollm2-{}-aux", "SmolLM2 fine-tuned, aux 0.5"),
        ("smollm2-{}-noaux", "SmolLM2 fine-tuned, aux 0"),
        ("smollm2-{}-zeroshot", "SmolLM2 zero-shot"),
    ]
    lines = [
        "| task (dev metric) | "
        + " | ".join(name for _, name in settings)
        + " | GPT-1 paper (test): full / no pretraining / no aux |",
        "|---" * (len(settings) + 2) + "|",
    ]
    for task, (_, _, metric) in TASKS.items():
        cells = []
        for pattern, _ in settings:
            result = stored.get(pattern.format(task))
            cells.append(_cell(result, metric))
        paper = PAPER.get(task)
        paper_cell = " / ".join(f"{v:.1f}" for v in paper.values()) if paper else "not in the paper"
        lines.append(f"| {task} ({METRIC_NAMES[metric]}) | " + " | ".join(cells) + f" | {paper_cell} |")
    commands = [f"- `{r['key']}`: `{r['command']}` ({r['wall_s'] / 60:.1f} min)" for r in stored.values()]
    hardware_line = next(iter(stored.values()))["hardware"] if stored else ""
    notes = [
        "",
        f"Hardware: {hardware_line}. Dev sets: MiniLM on the whole split (RTE 277, MRPC 408, STS-B 1,500, COPA 100,",
        "CommonsenseQA 1,221); SmolLM2 on the first 200 (COPA: 100). Zero-shot: length-normalised accuracy, the",
        "unnormalised one in brackets; MRPC's F1 from the normalised scores. MiniLM has no language-modelling",
        "head, so no zero-shot column; '-' for STS-B zero-shot: a score, which class words do not give.",
        "Wall times are from a machine shared with development work, not speed measurements.",
        SMOLLM2_NOTE,
    ]
    return "\n".join([*lines, *notes, "", "Commands:", *commands]) + "\n"


def _cell(result: dict | None, metric: str) -> str:
    if result is None:
        return "-"
    if result["setting"] == "zero-shot":
        if "accuracy" not in result and metric not in result:
            return "-"
        value = result.get(metric, result.get("accuracy"))
        unnormalised = result.get("acc", result.get("accuracy_unnormalized")) if metric == "accuracy" else None
        extra = f" ({unnormalised * 100:.1f} unnorm.)" if unnormalised is not None else ""
        return f"{value * 100:.1f}{extra}"
    return f"{result[metric] * 100:.1f}"


if __name__ == "__main__":
    by_key = {r.key: r for r in runs()}
    bench_main(sys.argv[1:], list(by_key), lambda key: execute(by_key[key]), RESULTS, TABLE, table)
