"""data.streaming against reading the split whole, on the same 200,000-row training file, in the same run.

Usage: make bench-streaming   (writes bench/results/streaming.md and streaming.json)
The file is SST-2's 67,349 training sentences three times over (JSON lines); MiniLM-L6 trains 100 steps of 32 on
it either way, in a fresh `finetune train` process each. Reported: the wall time of the whole command, the time
before the first step (reading and tokenizing), the process' peak memory and the training throughput.
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "glue" / "sst2"
ROWS = 200_000


def write_rows(path: Path) -> None:
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    with path.open("w", encoding="utf-8") as handle:
        for n in range(ROWS):
            sentence, label = lines[n % len(lines)].rsplit("\t", 1)
            handle.write(json.dumps({"sentence": sentence, "label": label}) + "\n")


def run(folder: Path, train: Path, streaming: bool) -> dict:
    output = folder / f"run-{streaming}"
    command = [
        str(REPO / ".venv" / "bin" / "finetune"),
        "train",
        "recipes/glue/sst2-minilm.yaml",
        "data.source=null",
        "data.subset=null",
        f"data.files={{train: {train}, validation: {SST2 / 'dev.tsv'}}}",
        "data.reader.quoting=none",
        f"data.streaming={str(streaming).lower()}",
        "task.labels=['0','1']",
        "train.max_steps=100",
        "train.batch_size=32",
        "train.eval_every=1000",
        "data.max_eval_samples=200",
        f"output_dir={output}",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - start
    metrics = json.loads((output / "metrics.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "before_first_step_s": round(wall - metrics["train_runtime_s"], 1),
        "train_samples_per_second": metrics["train_samples_per_second"],
        "peak_rss_mb": metrics["peak_rss_mb"],
        "accuracy": metrics["accuracy"],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train = folder / "train.jsonl"
        write_rows(train)
        size_mb = train.stat().st_size / 2**20
        results = {"whole": run(folder, train, False), "streamed": run(folder, train, True)}
    whole, streamed = results["whole"], results["streamed"]
    result = {
        "command": "make bench-streaming",
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "libraries": {name: version(name) for name in ("torch", "transformers", "datasets", "accelerate")},
        "rows": ROWS,
        "file_mb": round(size_mb, 1),
        **results,
        "ratio_wall_streamed_to_whole": round(streamed["wall_s"] / whole["wall_s"], 2),
    }
    (REPO / "bench" / "results" / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {name} | {r['wall_s']} | {r['before_first_step_s']} | {r['train_samples_per_second']} | "
        f"{r['peak_rss_mb']} | {r['accuracy']:.3f} |"
        for name, r in results.items()
    ]
    (REPO / "bench" / "results" / "streaming.md").write_text(
        f"# data.streaming against reading the split whole\n\n`{result['command']}`; {result['machine']}; "
        f"{', '.join(f'{k} {v}' for k, v in result['libraries'].items())}.\n\n"
        f"MiniLM-L6, 100 steps of 32 on a {ROWS:,}-row JSON-lines file ({size_mb:.0f} MB; SST-2's training "
        "sentences three times over), evaluated on 200 dev rows; each way in a fresh `finetune train` process.\n\n"
        "| split read | wall s | before the first step s | samples/s | peak RSS MB | accuracy |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Streamed / whole wall time: {result['ratio_wall_streamed_to_whole']}.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
