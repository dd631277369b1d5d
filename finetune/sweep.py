"""`finetune sweep`: a recipe trained over a grid of training-set fractions, seeds and settings, one run folder a
cell, with the learning curve as `sweep.json`, a Markdown table and a plot (the metric against training examples,
the spread over seeds, the majority-class and zero-shot references, the best setting per fraction).

A sweep is resumable: a cell whose run finished is read back, an interrupted one resumes from its checkpoint, so
running the same command again trains only what is missing. Cells run in this process one after another, or
`--jobs N` at a time as `finetune train` processes sharing the CPU cores.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.recipe import Recipe, dump_recipe, load_recipe
from finetune.rundir import METRICS_FILE, checkpoint_dirs, write_json
from finetune.sweep_report import write_report


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its share of the training split, that many examples, its seed and its settings."""

    fraction: float
    examples: int
    seed: int
    setting: dict[str, str]

    @property
    def overrides(self) -> list[str]:
        return [f"data.max_train_samples={self.examples}", f"train.seed={self.seed}"] + [
            f"{key}={value}" for key, value in self.setting.items()
        ]

    @property
    def name(self) -> str:
        setting = "-".join(f"{key.rpartition('.')[2]}={value}" for key, value in self.setting.items())
        return "-".join(filter(None, (f"n{self.examples}", setting, f"seed{self.seed}"))).replace("/", "_")


def settings_grid(sets: list[str]) -> list[dict[str, str]]:
    """Every combination of the `--set key=v1,v2` values (commas inside brackets or quotes do not split)."""
    axes = []
    for text in sets:
        key, sep, values = text.partition("=")
        if not sep or not key or not values:
            raise FinetuneError(f"--set {text}: expected key.path=value1,value2,...")
        axes.append([(key, value) for value in _split_top_level(values)])
    return [dict(combination) for combination in itertools.product(*axes)]


def _split_top_level(text: str) -> list[str]:
    parts, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    return [part for part in [*parts, current.strip()] if part]


def plan(recipe: Recipe, available: int, fractions: list[float], seeds: int, settings: list[str]) -> list[Cell]:
    """The grid's cells: each fraction of the `available` training examples (at least one; fractions giving the
    same count run once) x each setting x seeds counted from train.seed."""
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise FinetuneError(f"--fractions: each is a share of the training split in (0, 1], got {bad[0]}")
    if seeds < 1:
        raise FinetuneError("--seeds: at least one")
    counts = sorted({max(1, round(f * available)): f for f in sorted(fractions)}.items())
    return [
        Cell(round(n / available, 6), n, recipe.train.seed + k, setting)
        for n, _ in counts
        for setting in settings_grid(settings)
        for k in range(seeds)
    ]


def run_sweep(
    path: Path,
    overrides: list[str],
    fractions: list[float],
    seeds: int,
    settings: list[str],
    output: Path | None = None,
    jobs: int = 1,
    zero_shot: bool = False,
) -> dict[str, Any]:
    """Train every cell not yet finished in `output` (default runs/<name>/sweep), then write the report there."""
    recipe = load_recipe(path, overrides)
    if recipe.task.reads_mixture:
        raise FinetuneError("--fractions: a sweep cuts data.source or data.files; a mixture is cut by max_examples")
    if recipe.data.streaming:  # fractions need the split's size, the majority reference its labels
        raise FinetuneError("data.streaming: a sweep reads the training split whole; sweep with data.streaming=false")
    for setting in settings_grid(settings):  # every cell's recipe is valid before anything trains
        load_recipe(path, overrides + [f"{k}={v}" for k, v in setting.items()])
    output = output or Path("runs") / recipe.name / "sweep"
    references = _references(recipe, zero_shot)
    cells = plan(recipe, references.pop("train_examples"), fractions, seeds, settings)
    base = dump_recipe(recipe)
    pending = [cell for cell in cells if not _finished(output / cell.name, cell, base)]
    print(f"sweep: {len(cells)} cells, {len(cells) - len(pending)} already finished, in {output}", file=sys.stderr)
    if jobs > 1:
        _run_processes(path, overrides, pending, output, base, jobs)
    else:
        for number, cell in enumerate(pending, 1):
            print(f"sweep: cell {number} of {len(pending)}: {cell.name}", file=sys.stderr)
            _run_here(path, overrides, cell, output / cell.name, base)
    found = [
        {**asdict(cell), "folder": cell.name, "metrics": json.loads((output / cell.name / METRICS_FILE).read_text())}
        for cell in cells
    ]
    return write_report(output, recipe, found, references, settings)


def _finished(folder: Path, cell: Cell, base: str) -> bool:
    """A cell's run finished for this very recipe; a folder trained from another recipe is an error."""
    record = folder.with_name(f"{folder.name}.json")
    if not record.is_file():
        return False
    if json.loads(record.read_text(encoding="utf-8"))["recipe"] != base:
        raise FinetuneError(
            f"{folder}: this cell was trained from another recipe (or other overrides); name a new sweep folder "
            "with --output, or remove the old one"
        )
    return (folder / METRICS_FILE).is_file()


def _start(folder: Path, cell: Cell, base: str) -> list[str]:
    """Record the cell beside its run folder (`<cell>.json`); the train flags that start, restart or resume it."""
    record = folder.with_name(f"{folder.name}.json")
    started = record.is_file() and folder.is_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, {**asdict(cell), "recipe": base})
    if not started:
        return []
    return ["--resume"] if checkpoint_dirs(folder) else ["--overwrite"]


def _run_here(path: Path, overrides: list[str], cell: Cell, folder: Path, base: str) -> None:
    from finetune.pipeline import train

    flags = _start(folder, cell, base)
    recipe = load_recipe(path, overrides + cell.overrides + [f"output_dir={folder}"])
    train(recipe, overwrite=flags == ["--overwrite"], resume=flags == ["--resume"])


def _run_processes(path: Path, overrides: list[str], cells: list[Cell], output: Path, base: str, jobs: int) -> None:
    """`jobs` cells at a time, each a `finetune train` process with its share of the CPU threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: list[tuple[Cell, subprocess.Popen]] = []
    queue = list(cells)
    while queue or running:
        while queue and len(running) < jobs:
            cell = queue.pop(0)
            folder = output / cell.name
            flags = _start(folder, cell, base)
            command = [sys.executable, "-m", "finetune", "train", str(path), *overrides, *cell.overrides]
            with (output / f"{cell.name}.log").open("w") as log:
                process = subprocess.Popen([*command, f"output_dir={folder}", *flags], stdout=log, stderr=log, env=env)
            running.append((cell, process))
        cell, process = running.pop(0)
        if process.wait() != 0:
            for _, other in running:
                other.terminate()
            raise FinetuneError(f"sweep: cell {cell.name} failed; see {output / f'{cell.name}.log'}")


def _references(recipe: Recipe, zero_shot: bool) -> dict[str, Any]:
    """The training examples available, and the reference scores: always predicting the training split's most
    frequent class (or candidate position), and the base model zero-shot when asked."""
    from finetune import data
    from finetune.metrics import compute_metrics, f1_setting

    raw = data.load_raw(recipe.data, {"train": recipe.data.train_split, "eval": recipe.data.eval_split})
    available = min(len(raw["train"]), recipe.data.max_train_samples or len(raw["train"]))
    found: dict[str, Any] = {"train_examples": available}
    spec, metric = recipe.task, recipe.task.metric_names[0]
    if spec.has_classes or spec.predicts == "candidate":
        labels = data.resolve_labels(recipe, raw["train"])
        train = [spec.encode_label(row, labels, n) for n, row in enumerate(raw["train"])]
        evaluation = data.cap_splits({"eval": raw["eval"]}, recipe.data, recipe.train.seed)["eval"]
        answers = [spec.encode_label(row, labels, n) for n, row in enumerate(evaluation)]
        majority = Counter(train).most_common(1)[0][0]
        candidates = 0 if labels else max(len(spec.candidates_of(row)[0]) for row in evaluation)
        scores = compute_metrics([metric], [majority] * len(answers), answers, f1_setting(spec, labels, candidates))
        found["majority"] = scores[metric]
    if zero_shot:
        from finetune.zeroshot import zero_shot as score

        found["zero_shot"] = score(recipe)[metric]
    return found
