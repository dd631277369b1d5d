"""Training speed side by side: `finetune train` against the tools users would pick instead (the plain HF Trainer
as run_glue.py and run_summarization.py use it, TRL's SFTTrainer), on the same data, model and settings, in one
invocation; samples/s, real tokens/s, padding, peak RSS, data preparation and the metric, with ratios.

Usage: python bench/speed.py [encoder|decoder|seq2seq ...] [--repeats N]   (default: all three workloads)
       python bench/speed.py --table   (only rewrite bench/results/speed.md from bench/results/speed.json)
Each row runs as its own process (peak RSS from os.wait4); rows repeat (2 for encoder and seq2seq, 1 for decoder)
with datasets' cache fresh per row and invocation, so the first run prepares data cold and the second warm.
Inputs, models, caches, run folders and logs go under runs/bench/speed/. Needs FINETUNE_DATA_MIRROR (make bench).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from string import Template
from typing import Any

from glue import hardware

from finetune.gguf_models import local_checkpoint
from finetune.mirrors import CACHE_ENV, DATA_MIRROR_ENV, resolve_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running this script: its python and its finetune
METRIC = {"encoder": "accuracy", "decoder": "eval_loss", "seq2seq": "rougeL"}
REPEATS = {"encoder": 2, "decoder": 1, "seq2seq": 2}
RATIOS = {  # workload: ours/baseline pairs, ours over the baseline in each line
    "encoder": "finetune/trainer-defaults finetune/trainer-best finetune-bf16/trainer-best-bf16"
    " finetune-bf16/trainer-best finetune/trainer-best-bf16",
    "decoder": "finetune-sft/sft-trl finetune-sft/sft-trl-packing finetune-sft-gc/sft-trl finetune-sft-padded/sft-trl",
    "seq2seq": "finetune-seq2seq/seq2seq-trainer",
}
RATIO_OF = {"samples/s": "samples_per_second", "real tokens/s": "tokens_per_second", "peak RSS": "peak_rss_gb"}
T5_SIZES = {"d_model": 256, "d_kv": 32, "d_ff": 1024, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 4}
DEFAULTS_ROWS = 640  # trainer-defaults pads every row to 128 tokens: about 10x slower, so it trains on fewer rows
TRAIN = "epochs: 1, warmup: 0, weight_decay: 0.0, max_grad_norm: 1.0, seed: 42, eval_every: epoch, precision: fp32"
RECIPES = {  # our recipe per workload, the same settings as the baselines'
    "encoder": """model: $model
task: {type: classification, text_a: sentence, label: label, labels: [negative, positive], metrics: [accuracy]}
data: {files: {train: $train, validation: $eval}, reader: {quoting: none}, max_length: 128}
train: {batch_size: 32, lr: 5.0e-5, $settings}
""",
    "decoder": """model: $model
task: {type: instruction}
data:
  mixture: [{files: {train: $train}, format: prompt_completion}]
  eval_mixture: [{files: {train: $eval}, format: prompt_completion}]
  max_length: 512
peft: {r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
generation: {max_new_tokens: 32}
train: {batch_size: 8, lr: 2.0e-4, $settings}
""",
    "seq2seq": """model: $model
task: {type: seq2seq, text_a: dialogue, label: summary, prefix: "summarize:", metrics: [rougeL]}
data: {files: {train: $train, validation: $eval}, max_length: 512, max_target_length: 128}
generation: {max_new_tokens: 64}
train: {batch_size: 16, lr: 3.0e-4, $settings}
""",
}
OUR_FIELDS = {  # result field: the metrics.json key of a finetune run
    "examples": "num_train_samples",
    "steps": "train_steps",
    "train_seconds": "train_runtime_s",
    "samples_per_second": "train_samples_per_second",
    "real_tokens": "train_real_tokens",
    "computed_tokens": "train_computed_tokens",
    "tokens_per_second": "train_tokens_per_second",
    "padding_share": "train_padding_share",
    "data_seconds": "data_seconds",
}
Rows = list[tuple[str, list[str]]]  # (row name, command: "python" or "finetune" first, {out} for its folder)


def rel(path: Path) -> str:
    return "./" + str(path.relative_to(REPO))


def link(target: str, link_path: Path) -> str:
    """A link under runs/ to a checkpoint folder elsewhere, so that commands and recipes name repo paths only."""
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.unlink(missing_ok=True)
    link_path.symlink_to(Path(target).resolve(), target_is_directory=True)
    return rel(link_path)


def inputs(root: Path, workload: str, model: str, files: dict[str, list]) -> tuple[str, dict[str, str]]:
    """Write each split's rows (JSONL, or TSV lines) and our recipe; the recipe's path and the files' paths."""
    paths = {}
    for key, rows in files.items():
        path = root / "data" / f"{workload}-{key}.{'tsv' if workload == 'encoder' else 'jsonl'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
        paths[key] = rel(path)
    recipe = root / "recipes" / f"speed-{workload}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    values = {"model": model, "train": paths["train"], "eval": paths["eval"], "settings": TRAIN}
    recipe.write_text(f"name: speed-{workload}\n" + Template(RECIPES[workload]).substitute(values))
    return rel(recipe), paths


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def turn(role: str, content: str) -> list[dict[str, str]]:
    return [{"role": role, "content": content}]


def encoder(root: Path, mirror: Path, size: int | None) -> tuple[Rows, list[str]]:
    """MiniLM-L6 on a 4,000-row seeded SST-2 subset (872 dev sentences evaluated): Trainer against finetune."""
    model = link(resolve_model("packaged:all-MiniLM-L6-v2").location, root / "models" / "all-MiniLM-L6-v2")
    train = (mirror / "glue" / "sst2" / "train.tsv").read_text().splitlines()
    dev = (mirror / "glue" / "sst2" / "dev.tsv").read_text().splitlines()
    sample = [train[0], *random.Random(42).sample(train[1:], size or 4000)]
    ours, files = inputs(root, "encoder", model, {"train": sample, "eval": dev[: (size or len(dev)) + 1]})
    base = (
        f"python bench/baselines/hf_glue.py --model {model} --train {files['train']} --eval {files['eval']}"
        " --out {out}/result.json --max-length 128 --batch-size 32 --lr 5e-5"
    ).split()
    rows = [
        ("trainer-defaults", [*base, "--mode", "defaults", "--max-train", str(DEFAULTS_ROWS)]),
        ("trainer-best", [*base, "--mode", "best"]),
        ("trainer-best-bf16", [*base, "--mode", "best", "--bf16"]),
        ("finetune", ["finetune", "train", ours]),
        ("finetune-bf16", ["finetune", "train", ours, "train.precision=bf16"]),
    ]
    note = "trainer-defaults (run_glue.py's defaults: every row padded to 128, about 10x slower) trains on the first"
    return rows, [f"{note} {DEFAULTS_ROWS} rows only: its samples/s and tokens/s compare, its accuracy does not."]


def decoder(root: Path, mirror: Path, size: int | None) -> tuple[Rows, list[str]]:
    """SmolLM2-135M-Instruct LoRA SFT on 160 Alpaca rows (the next 40 evaluated by loss): TRL against finetune."""
    found = resolve_model("packaged:SmolLM2-135M-Instruct-Q4_1")
    model = link(local_checkpoint(found), root / "models" / "SmolLM2-135M-Instruct")
    rows = json.loads((mirror / "instruct" / "alpaca" / "alpaca_data_1k.json").read_text())
    pairs = [(r["instruction"] + (f"\n\n{r['input']}" if r["input"].strip() else ""), r["output"]) for r in rows]
    count, held = size or 160, (size // 4 if size else 40)
    splits = {"train": pairs[:count], "eval": pairs[count : count + held]}
    files = {key: [{"prompt": p, "completion": c} for p, c in part] for key, part in splits.items()}
    for key, part in splits.items():  # TRL's conversational prompt-completion rows
        files[f"trl-{key}"] = [{"prompt": turn("user", p), "completion": turn("assistant", c)} for p, c in part]
    ours, paths = inputs(root, "decoder", model, files)
    base = (
        f"python bench/baselines/trl_sft.py --model {model} --train {paths['trl-train']} --eval {paths['trl-eval']}"
        " --out {out}/result.json --max-length 512 --batch-size 8 --lr 2e-4"
    ).split()
    rows = [
        ("sft-trl", base),
        ("sft-trl-packing", [*base, "--packing"]),
        ("finetune-sft", ["finetune", "train", ours]),
        ("finetune-sft-gc", ["finetune", "train", ours, "train.gradient_checkpointing=true"]),
        ("finetune-sft-padded", ["finetune", "train", ours, "data.packing=false"]),
    ]
    return rows, [
        "Metric: eval loss on the completions (lower is better); TRL averages it per eval batch. TRL keeps its"
        " default gradient checkpointing (on; finetune's default is off, -gc turns it on). finetune's default"
        " (data.packing: auto) packs each batch's 8 examples into rows (as wide as the longest example or as"
        " max_length, whichever computes fewer tokens) on this architecture; -padded pads them."
        " TRL's packing packs batch-size rows of up to 512 tokens each (several examples per row, so fewer steps).",
        f"SmolLM2 here is {found.about}.",
    ]


def seq2seq(root: Path, mirror: Path, size: int | None) -> tuple[Rows, list[str]]:
    """A small T5 (4+4 layers, 256 wide, from config) summarising DialogSum: Seq2SeqTrainer against finetune."""
    folder = root / "models" / "t5-bench"
    if not (folder / "config.json").is_file():
        build_t5(folder)
    dev, test = (read_jsonl(mirror / "seq2seq" / "dialogsum" / f"dialogsum.{split}.jsonl") for split in ("dev", "test"))
    files = {
        "train": [{"dialogue": r["dialogue"], "summary": r["summary"]} for r in dev[: size or 500]],
        "eval": [{"dialogue": r["dialogue"], "summary": r["summary1"]} for r in test[: size or 100]],
    }
    ours, paths = inputs(root, "seq2seq", rel(folder), files)
    base = (
        f"python bench/baselines/hf_seq2seq.py --model {rel(folder)} --train {paths['train']} --eval {paths['eval']}"
        " --out {out}/result.json --batch-size 16 --lr 3e-4 --max-new-tokens 64"
    ).split()
    rows = [("seq2seq-trainer", base), ("finetune-seq2seq", ["finetune", "train", ours])]
    note = "T5 from config (random weights, MiniLM's WordPiece vocabulary); ROUGE-L against the first of each test"
    return rows, [f"{note} dialogue's three references."]


def build_t5(folder: Path) -> None:
    """The bench T5 with MiniLM's tokenizer, as tests/conftest.py builds its T5: [SEP] ends sequences, the decoder
    starts from pad."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("packaged:all-MiniLM-L6-v2").location)
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id}
    config = T5Config(vocab_size=tokenizer.vocab_size, **T5_SIZES, **ids, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


WORKLOADS = {"encoder": encoder, "decoder": decoder, "seq2seq": seq2seq}


def run_once(argv: list[str], out: Path, cache: Path, log: Path) -> dict[str, Any]:
    """One row's process: its command, wall time, peak RSS (os.wait4) and result; `error` when it failed."""
    out.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [arg.replace("{out}", rel(out)) for arg in argv]
    ours = command[0] == "finetune"
    command += [f"output_dir={rel(out / 'run')}", "--overwrite"] if ours else []
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache / "datasets"), CACHE_ENV: str(cache / "finetune")}
    start = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen([str(BIN / command[0]), *command[1:]], cwd=REPO, env=env, stdout=sink, stderr=sink)
        _, status, usage = os.wait4(child.pid, 0)  # ru_maxrss: KiB on Linux
    child.returncode = os.waitstatus_to_exitcode(status)
    record = {"command": shlex.join(command), "wall_s": round(time.perf_counter() - start, 1)}
    record |= {"peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3), "log": rel(log)}
    if child.returncode:
        return {**record, "error": f"exit {child.returncode}"}
    if not ours:
        return {**record, **json.loads((out / "result.json").read_text())}
    return {**record, **from_metrics(json.loads((out / "run" / "metrics.json").read_text()))}


def from_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """A finetune run's metrics.json in the baselines' result shape; fields it lacks stay None."""
    fields = {key: m.get(name) for key, name in OUR_FIELDS.items()}
    metrics = {k: m[k] for k in ("accuracy", "eval_loss", "rougeL", "exact_match") if k in m}
    tokens = {k: v for k, v in m.items() if k.startswith("train_tokens_")}  # its own length report's counts
    return {"tool": "finetune", **fields, "metrics": metrics, "token_report": tokens}


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for package in ("torch", "transformers", "accelerate", "peft", "datasets", "trl"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def run_workload(workload: str, root: Path, mirror: Path, size: int | None, repeats: int) -> dict[str, Any]:
    """Every row of a workload, repetitions interleaved (all rows once, then again); a fresh cache per row."""
    rows, notes = WORKLOADS[workload](root, mirror, size)
    now = datetime.now()
    folder = root / "runs" / f"{workload}-{now:%Y%m%d-%H%M%S}"  # a fresh cache per invocation
    stored: dict[str, list[dict]] = {name: [] for name, _ in rows}
    for rep in range(1, repeats + 1):
        for name, argv in rows:
            print(f"[{workload}] {name}, run {rep} of {repeats}", file=sys.stderr, flush=True)
            log = root / "logs" / f"{name}-{rep}.log"
            stored[name].append(run_once(argv, folder / name / str(rep), folder / "cache" / name, log))
            print(json.dumps(stored[name][-1]), file=sys.stderr, flush=True)
    entry = {"date": f"{now:%Y-%m-%d %H:%M}", "hardware": hardware(), "versions": versions()}
    return {**entry, "metric": METRIC[workload], "notes": notes, "rows": stored}


def values(records: list[dict], key: str, inner: str | None = None) -> list[float]:
    found = [r[key] if inner is None else r[key].get(inner) for r in records if "error" not in r]
    return [v for v in found if v is not None]


def median(records: list[dict], key: str) -> float | None:
    found = values(records, key)
    return statistics.median(found) if found else None


def number(value: float, fmt: str | None = None) -> str:
    return format(value, fmt) if fmt else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def spread(records: list[dict], key: str, fmt: str | None = None, inner: str | None = None) -> str:
    """The median over a row's runs, and (min-max) when there are several."""
    found = values(records, key, inner)
    if not found:
        return "-"
    text = number(statistics.median(found), fmt)
    return text if len(found) == 1 else f"{text} ({number(min(found), fmt)}-{number(max(found), fmt)})"


def ratio(ours: float | None, base: float | None) -> str:
    return f"{ours / base:.2f}x" if ours and base else "n/a"


def table(stored: dict[str, Any]) -> str:
    """speed.md: per workload, one line per row, the ratios of ours over each baseline, notes and commands."""
    lines = ["# Training speed: finetune against the HF Trainer and TRL", ""]
    for workload in [w for w in WORKLOADS if w in stored["workloads"]]:
        entry = stored["workloads"][workload]
        metric, rows = entry["metric"], entry["rows"]
        versions_line = ", ".join(f"{k} {v}" for k, v in entry["versions"].items())
        lines += [f"## {workload}", "", f"{entry['hardware']}; {entry['date']}; {versions_line}.", ""]
        lines += [
            "| row | samples/s (median, min-max) | real tokens/s | padding share | peak RSS GB (median, min-max) |"
            f" data prep s (1st / 2nd run) | {metric} (median, min-max) | examples, steps |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, records in rows.items():
            ok = [r for r in records if "error" not in r]
            if not ok:
                lines.append(f"| {name} | failed ({records[0]['error']}; see {records[0]['log']}) |" + " |" * 6)
                continue
            share = median(ok, "padding_share")
            cells = [
                spread(ok, "samples_per_second"),
                spread(ok, "tokens_per_second"),
                "-" if share is None else f"{share:.1%}",
                spread(ok, "peak_rss_gb", ".2f"),
                " / ".join("-" if r.get("data_seconds") is None else f"{r['data_seconds']:.1f}" for r in ok),
                spread(ok, "metrics", ".4f", metric),
                f"{ok[0]['examples']}, {ok[0]['steps']}",
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for pair in RATIOS[workload].split():
            a, b = (rows.get(name, []) for name in pair.split("/"))
            parts = [f"{label} {ratio(median(a, key), median(b, key))}" for label, key in RATIO_OF.items()]
            lines.append(f"- {pair.replace('/', ' / ')}: " + ", ".join(parts))
        commands = [f"- `{name}`: `{records[0]['command']}`" for name, records in rows.items()]
        lines += ["", *entry["notes"], "", "Commands (first run; `python` and `finetune` from .venv):", *commands, ""]
    return "\n".join(lines)


def main() -> None:
    flags = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_argument("workloads", nargs="*", metavar="|".join(WORKLOADS), help="default: all")
    flags.add_argument("--repeats", type=int, help="runs per row (default 2 for encoder and seq2seq, 1 for decoder)")
    flags.add_argument("--table", action="store_true", help="only rewrite the markdown from the stored JSON")
    flags.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # 40 examples, 1 run, runs/ only
    args = flags.parse_args()
    if set(args.workloads) - set(WORKLOADS):
        flags.error(f"workloads are {', '.join(WORKLOADS)}")
    root = REPO / "runs" / "bench" / "speed" / ("smoke" if args.smoke else "")
    results = root / "speed.json" if args.smoke else REPO / "bench" / "results" / "speed.json"
    stored = json.loads(results.read_text()) if results.is_file() else {"workloads": {}}
    if not args.table:
        if not os.environ.get(DATA_MIRROR_ENV):
            raise SystemExit(f"{DATA_MIRROR_ENV} is not set: run `make bench`, or point it at the shared data folder")
        results.parent.mkdir(parents=True, exist_ok=True)
        for workload in args.workloads or list(WORKLOADS):
            repeats = args.repeats or (1 if args.smoke else REPEATS[workload])
            mirror, size = Path(os.environ[DATA_MIRROR_ENV]), 40 if args.smoke else None
            stored["workloads"][workload] = run_workload(workload, root, mirror, size, repeats)
            results.write_text(json.dumps(stored, indent=2) + "\n")
            results.with_suffix(".md").write_text(table(stored))
    results.with_suffix(".md").write_text(table(stored))


if __name__ == "__main__":
    main()
