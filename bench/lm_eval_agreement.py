"""Do our zero-shot `acc` and `acc_norm` equal lm-evaluation-harness's? Both score SmolLM2-135M-Instruct (the
packaged Q4_1 checkpoint, dequantised) on the first N ARC-Easy questions with the same prompt; then lm-eval loads a
LoRA run folder of ours as it is (`peft=`). Writes bench/results/lm-eval-agreement.md.

lm-eval is a benchmark tool here, never a dependency: `pip install --no-deps --target DIR lm-eval jsonlines numexpr
pytablewriter sqlitedict tqdm-multiprocess word2number zstandard more_itertools DataProperty mbstrdecoder
pathvalidate tabledata tcolorpy typepy chardet`, then `LMEVAL=DIR python bench/lm_eval_agreement.py RUN_DIR`, where
RUN_DIR is a LoRA run of a causal LM on the same base (the result file says which).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from glue import REPO, hardware, parse_metrics_line, run_finetune

from finetune.mirrors import converted_dir

LIMIT = 100
PROMPT = "Question: {question}\nAnswer:"
TASK = """task: arc_local
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
"""


def lm_eval(folder: Path, model_args: str) -> tuple[dict[str, float], str]:
    """lm-eval's acc and acc_norm on the task in `folder`, and the command."""
    command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", "arc_local"]
    command += ["--include_path", str(folder), "--batch_size", "16", "--limit", str(LIMIT)]
    out = folder / f"out-{len(list(folder.glob('out-*')))}"
    env = {**os.environ, "PYTHONPATH": os.environ["LMEVAL"]}
    subprocess.run([*command, "--output_path", str(out)], check=True, env=env, cwd=REPO)
    [found] = out.rglob("results_*.json")
    scores = json.loads(found.read_text())["results"]["arc_local"]
    return {"acc": scores["acc,none"], "acc_norm": scores["acc_norm,none"]}, " ".join(["python", *command[1:]])


def main(run_dir: str) -> None:
    rows = [json.loads(line) for line in (REPO.parent / "shared/data/choice/arc_easy/dev.jsonl").open()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with (folder / "arc.jsonl").open("w") as handle:
            for row in rows:
                labels = [c["label"] for c in row["question"]["choices"]]
                query = PROMPT.format(question=row["question"]["stem"])
                texts = [c["text"] for c in row["question"]["choices"]]
                handle.write(json.dumps({"query": query, "choices": texts, "gold": labels.index(row["answerKey"])}))
                handle.write("\n")
        (folder / "arc_local.yaml").write_text(TASK.format(data=folder / "arc.jsonl"))
        ours_args = [
            "eval", "recipes/choice/arc-easy-minilm.yaml", "--zero-shot", "model=packaged:SmolLM2-135M-Instruct-Q4_1",
            "data.split=null", "task.context=null", f"task.context_template={json.dumps(PROMPT)}",
            "data.max_length=256", f"data.max_eval_samples={LIMIT}", "--output", str(folder / "ours"),
        ]  # fmt: skip
        stdout, _, ours_command = run_finetune(ours_args, "zero-shot")
        ours = parse_metrics_line(stdout.splitlines()[-2])
        checkpoint = converted_dir("packaged:SmolLM2-135M-Instruct-Q4_1")
        theirs, theirs_command = lm_eval(folder, f"pretrained={checkpoint},dtype=float32")
        lora = f"pretrained={checkpoint},peft={run_dir},tokenizer={run_dir},dtype=float32"
        adapted, adapted_command = lm_eval(folder, lora)
    lines = [
        "# Zero-shot acc and acc_norm: ours against lm-evaluation-harness",
        "",
        f"Machine: {hardware()}. SmolLM2-135M-Instruct (packaged Q4_1, dequantised to fp32), the first {LIMIT} "
        f"ARC-Easy validation questions, prompt `{json.dumps(PROMPT)}` and each candidate after a space.",
        "",
        "| scorer | acc | acc_norm |",
        "|---|---|---|",
        f"| finetune eval --zero-shot | {ours['acc']:.2f} | {ours['acc_norm']:.2f} |",
        f"| lm-evaluation-harness | {theirs['acc']:.2f} | {theirs['acc_norm']:.2f} |",
        f"| lm-evaluation-harness, our LoRA run folder as `peft=` | {adapted['acc']:.2f} | {adapted['acc_norm']:.2f} |",
        "",
        f"- ours: `{ours_command}`",
        f"- lm-eval: `{theirs_command}` (a local multiple_choice task over the same rows)",
        f"- LoRA: `{adapted_command}`; RUN_DIR: `finetune train recipes/instruct/alpaca-smollm2-lora.yaml "
        "train.max_steps=4 'data.mixture=[{source: tatsu-lab/alpaca, format: alpaca, max_examples: 40, held_out: 4}]' "
        "generation.max_new_tokens=8` (a few steps: it shows the folder loads, not what LoRA learns)",
    ]
    text = "\n".join(lines) + "\n"
    for path, name in (
        (str(folder), "TASK_DIR"),
        (str(checkpoint), "$FINETUNE_CACHE/models/packaged/SmolLM2-135M-Instruct-Q4_1"),
        (run_dir, "RUN_DIR"),
    ):
        text = text.replace(path, name)  # no machine's paths in the results
    (REPO / "bench/results/lm-eval-agreement.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1])
