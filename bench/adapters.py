"""Full fine-tuning against LoRA, LoRA on an 8-bit base and QLoRA (4-bit NF4) on this machine: MiniLM-L6 on SST-2
and SmolLM2-135M-Instruct on Alpaca (instruction SFT), each with the metric, trainable share, peak memory and time.

Usage: python bench/adapters.py [KEY ...]   (default: every run, in order)
       python bench/adapters.py --table     (only rewrite bench/results/adapters.md from stored results)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from glue import SMOLLM2_NOTE, bench_main, hardware, run_finetune

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "adapters"
TABLE = REPO / "bench" / "results" / "adapters.md"
MINILM_CAPS = ["data.max_train_samples=4000", "train.eval_every=1000"]  # one epoch of 4,000 sentences, all 872 dev
# 100 Alpaca examples (cut at 256 tokens) for one epoch, 30 held-out ones generated and judged
SMOLLM2_CAPS = [
    "data.max_train_samples=100",
    "data.max_eval_samples=30",
    "data.max_length=256",
    "generation.max_new_tokens=48",
]
SETTINGS = {  # setting: overrides on the LoRA recipe
    "full": ["peft=null"],
    "lora": [],
    "lora-8bit": ["quantize={bits: 8}"],
    "qlora-4bit": ["quantize={bits: 4, quant_type: nf4, double_quant: true}"],
}
MODELS = {  # model: (LoRA recipe, caps, full fine-tuning's learning rate, metric)
    "minilm-sst2": ("recipes/lora/sst2-minilm-lora.yaml", MINILM_CAPS, "1.0e-4", "accuracy"),
    "smollm2-alpaca": ("recipes/instruct/alpaca-smollm2-lora.yaml", SMOLLM2_CAPS, "5.0e-5", "rougeL"),
}
RUNS = {f"{model}-{setting}": (model, setting) for model in MODELS for setting in SETTINGS}
COLUMNS = ("trainable_share", "peak_rss_mb", "model_footprint_mb", "train_runtime_s", "train_samples_per_second")


def execute(key: str) -> dict:
    model, setting = RUNS[key]
    recipe, caps, full_lr, _ = MODELS[model]
    out = REPO / "runs" / "bench" / "adapters" / key
    arguments = ["train", recipe, *caps, *SETTINGS[setting]]
    arguments += [f"train.lr={full_lr}"] if setting == "full" else []
    arguments += [f"output_dir={out.relative_to(REPO)}", "--overwrite"]
    _, wall, command = run_finetune(arguments, key)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "key": key,
        "model": model,
        "setting": setting,
        "command": command,
        "wall_s": round(wall, 1),
        "hardware": hardware(),
        **metrics,
    }


def table() -> str:
    stored = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    lines = []
    for model, (_, _, _, metric) in MODELS.items():
        lines += [f"{model} ({metric}):", "", "| setting | " + metric + " | " + " | ".join(COLUMNS) + " |"]
        lines.append("|---" * (len(COLUMNS) + 2) + "|")
        for setting in SETTINGS:
            r = stored.get(f"{model}-{setting}")
            cells = [f"{r[metric]:.4f}", *(str(r.get(c, "-")) for c in COLUMNS)] if r else ["-"] * (len(COLUMNS) + 1)
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    commands = [f"- `{r['key']}`: `{r['command']}` ({r['wall_s'] / 60:.1f} min)" for r in stored.values()]
    hardware_line = next(iter(stored.values()))["hardware"] if stored else ""
    return "\n".join([*lines, f"Hardware: {hardware_line}.", SMOLLM2_NOTE, "", "Commands:", *commands]) + "\n"


if __name__ == "__main__":
    bench_main(sys.argv[1:], list(RUNS), execute, RESULTS, TABLE, table)
