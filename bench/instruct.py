"""Generation on this machine: SmolLM2-135M-Instruct zero-shot and after instruction tuning on the held-out
Super-NaturalInstructions tasks present here (per-task ROUGE-L and exact match), and JFLEG grammar correction
with SmolLM2 as a seq2seq decoder, zero-shot and fine-tuned.

Usage: python bench/instruct.py [KEY ...]   (default: every run, in order; KEY as in RUNS)
       python bench/instruct.py --table     (only rewrite bench/results/instruct.md from stored results)
Each run is one `finetune` command (stored with its result) under caps that fit 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from glue import SMOLLM2_NOTE, bench_main, hardware, parse_metrics_line, run_finetune

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "instruct"
TABLE = REPO / "bench" / "results" / "instruct.md"
NI = "recipes/instruct/natural-instructions-smollm2.yaml"
JFLEG = "recipes/seq2seq/jfleg-smollm2.yaml"
# 20 examples of each held-out task, the same for every run; 12 of each of the 36 training tasks (432), zero-shot
# as the held-out evaluation is (the recipe's 2-shot prompts run at 0.3 examples/s here)
NI_EVAL = (
    "data.eval_mixture=[{source: allenai/natural-instructions, format: natural_instructions, split: test, "
    "max_examples: 20}]"
)
NI_TRAIN = (
    "data.mixture=[{source: allenai/natural-instructions, format: natural_instructions, split: train, "
    "max_examples: 12}]"
)
JFLEG_CAPS = ["data.max_train_samples=200", "data.max_eval_samples=200", "train.epochs=1"]  # 200 x 4 corrections

RUNS = {  # key: (what, finetune arguments)
    "smollm2-ni-zeroshot": ("SmolLM2 zero-shot", ["eval", NI, "--zero-shot", f"--set={NI_EVAL}"]),
    "smollm2-ni-tuned": ("SmolLM2 instruction-tuned", ["train", NI, NI_TRAIN, NI_EVAL, "task.shots=0"]),
    "smollm2-jfleg-zeroshot": ("SmolLM2 zero-shot", ["eval", JFLEG, "--zero-shot", "--set=data.max_eval_samples=200"]),
    "smollm2-jfleg-tuned": ("SmolLM2 fine-tuned", ["train", JFLEG, *JFLEG_CAPS]),
}


def execute(key: str) -> dict:
    what, arguments = RUNS[key]
    out = REPO / "runs" / "bench" / "instruct" / key
    arguments = list(arguments)
    if arguments[0] == "train":
        arguments += [f"output_dir={out.relative_to(REPO)}", "--overwrite"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        arguments += ["--predictions", str((out / "predictions.jsonl").relative_to(REPO))]
    stdout, wall, command = run_finetune(arguments, key)
    if arguments[0] == "train":
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = parse_metrics_line(stdout)
    for suffix in (".tasks.json", ".tasks.md", ".jsonl"):  # the per-task table and the generations themselves
        if (out / f"predictions{suffix}").is_file():
            shutil.copy2(out / f"predictions{suffix}", RESULTS / f"{key}.predictions{suffix}")
    command = " ".join(["finetune", *(a if " " not in a else repr(a) for a in arguments)])
    return {
        "key": key,
        "setting": what,
        "command": command,
        "wall_s": round(wall, 1),
        "hardware": hardware(),
        **metrics,
    }


def table() -> str:
    """The results as Markdown: per held-out task, zero-shot beside tuned; then JFLEG."""
    stored = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")) if p.stem.count(".") == 0}
    lines = ["Held-out Super-NaturalInstructions tasks (20 examples each), ROUGE-L / exact match (x100):", ""]
    tasks = {
        key: json.loads((RESULTS / f"{key}.predictions.tasks.json").read_text())
        for key in ("smollm2-ni-zeroshot", "smollm2-ni-tuned")
        if (RESULTS / f"{key}.predictions.tasks.json").is_file()
    }
    lines += ["| task | SmolLM2 zero-shot | SmolLM2 instruction-tuned |", "|---|---|---|"]
    for name in sorted({t for table in tasks.values() for t in table}):
        cells = [_pair(tasks.get(k, {}).get(name)) for k in ("smollm2-ni-zeroshot", "smollm2-ni-tuned")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    overall = [_pair(stored.get(k)) for k in ("smollm2-ni-zeroshot", "smollm2-ni-tuned")]
    lines.append("| all 100 examples | " + " | ".join(overall) + " |")
    lines += ["", "JFLEG test (first 200 sentences, four references each), x100 for exact match:", ""]
    lines += ["| setting | sacreBLEU | exact match | chrF |", "|---|---|---|---|"]
    copied = copy_baseline(200)
    cells = [f"{copied['bleu']:.1f}", f"{copied['exact_match'] * 100:.1f}", f"{copied['chrf']:.1f}"]
    lines.append("| the source copied unchanged | " + " | ".join(cells) + " |")
    for key in ("smollm2-jfleg-zeroshot", "smollm2-jfleg-tuned"):
        r = stored.get(key)
        cells = [f"{r['bleu']:.1f}", f"{r['exact_match'] * 100:.1f}", f"{r['chrf']:.1f}"] if r else ["-"] * 3
        lines.append(f"| {RUNS[key][0]} | " + " | ".join(cells) + " |")
    commands = [f"- `{r['key']}`: `{r['command']}` ({r['wall_s'] / 60:.1f} min)" for r in stored.values()]
    budget = sum(r["wall_s"] for r in stored.values()) / 60
    hardware_line = next(iter(stored.values()))["hardware"] if stored else ""
    notes = [f"Hardware: {hardware_line}; {budget:.0f} min in all.", SMOLLM2_NOTE]
    return "\n".join([*lines, "", *notes, "", "Commands:", *commands]) + "\n"


def copy_baseline(count: int) -> dict[str, float]:
    """JFLEG's no-change baseline: each test sentence itself as its correction, judged as the runs are."""
    from finetune.metrics import compute_metrics
    from finetune.recipe.data_section import ReaderSpec
    from finetune.sources import locate, read_rows

    rows = list(read_rows(locate("jhu-clsp/jfleg", None, None, ReaderSpec()), "test", "lines"))[:count]
    return compute_metrics(
        ["bleu", "exact_match", "chrf"], [r["sentence"] for r in rows], [r["corrections"] for r in rows]
    )


def _pair(result: dict | None) -> str:
    if not result:
        return "-"
    return f"{result['rougeL'] * 100:.1f} / {result['exact_match'] * 100:.1f}"


if __name__ == "__main__":
    bench_main(sys.argv[1:], list(RUNS), execute, RESULTS, TABLE, table)
