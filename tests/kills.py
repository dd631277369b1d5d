"""The kill harness: real `finetune train` runs in child processes, killed with SIGKILL at a named point (the Nth call
of the function that writes a checkpoint, a best/ or final weight file, a log line, the metrics...) or at a random
moment, then resumed until they finish; the weights (tensor by tensor), metrics and log must equal an uninterrupted
run's, and no visible file may be half written at any moment. `tests/test_kills.py` runs the fast points,
`bench/reliability.py` (make bench-reliability) all of them.

Children fork from a server that imported the stack once, so a run costs its training, not a second of imports.
"""

from __future__ import annotations

import functools
import importlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from finetune.export import EVAL_RESULTS_DIR
from finetune.rundir import MARKER, STATE_FILE, latest_checkpoint

PathOf = Callable[[tuple], str]


def _arg(index: int) -> PathOf:
    return lambda args: str(args[index]) if len(args) > index else ""


@dataclass(frozen=True)
class Point:
    """Where a run dies: at the Nth call of `targets` whose path contains `match`, before or after the call, or
    leaving its file torn (half its bytes) or its folder half deleted."""

    targets: tuple[str, ...]  # "module:attribute.path", patched where callers look it up
    effect: str  # before | after | torn-file | torn-tree
    path: PathOf = _arg(0)
    match: str = ""
    what: str = ""
    within: str = ""  # "module:function" that must be running (on the call stack) for a call to count


WEIGHT_WRITERS = ("transformers.modeling_utils:safe_save_file", "peft.peft_model:safe_save_file")
POINTS: dict[str, Point] = {
    "tokenizing": Point(
        ("datasets.arrow_writer:ArrowWriter.write_table", "datasets.arrow_writer:ArrowWriter.write_batch"),
        "after",
        what="while datasets writes tokenized rows into its cache",
        within="finetune.data:tokenize",
    ),
    "optimizer-step": Point(("accelerate.optimizer:AcceleratedOptimizer.step",), "before", what="mid-step"),
    "log-line": Point(
        ("finetune.rundir:JsonlLog.write",), "torn-file", path=lambda a: str(a[0].path), what="half a log line"
    ),
    "evaluation": Point(("finetune.engine:Engine._evaluate",), "before", what="as an evaluation starts"),
    "checkpoint-state": Point(
        ("accelerate.accelerator:Accelerator.save_state",), "after", what="checkpoint state written, not published"
    ),
    "checkpoint-weights": Point(
        ("accelerate.utils.other:safe_save_file",), "torn-file", _arg(1), "/checkpoints/", "a checkpoint's weights torn"
    ),
    "checkpoint-publish": Point(
        ("finetune.checkpoints:replace_dir",), "before", match=".tmp-step", what="checkpoint complete, not renamed"
    ),
    "checkpoint-prune": Point(("shutil:rmtree",), "torn-tree", match=".old-step", what="old checkpoint half deleted"),
    "best-weights": Point(WEIGHT_WRITERS, "torn-file", _arg(1), ".tmp-best", "best/ weights torn"),
    "best-swap": Point(("pathlib:Path.rename",), "after", _arg(1), ".old-best", "between best/ moved aside and new"),
    "final-weights": Point(WEIGHT_WRITERS, "torn-file", _arg(1), ".tmp-.final", "final weights torn"),
    "final-publish": Point(("pathlib:Path.replace",), "before", match="/.final/", what="final files half published"),
    "metrics": Point(("finetune.pipeline:write_json",), "before", match="metrics.json", what="before metrics.json"),
    "model-card": Point(("finetune.pipeline:write_model_card",), "before", what="before the model card"),
}
RANDOM = "random-moment"  # the parent kills at a uniformly drawn time within the uninterrupted run's duration

# metrics that measure the machine, not what was learned
VOLATILE = ("_runtime_s", "_per_second", "data_seconds", "peak_", "_rss", "_s", "tokens_per_s", "samples_per_s")


def _resolve(target: str) -> tuple[Any, str]:
    module, _, attribute = target.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _tear_file(path: Path, before: int) -> None:
    """Keep half of what the call wrote."""
    after = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(before + (after - before) // 2)


def _tear_tree(path: Path) -> None:
    """Delete half of the files in the folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    for item in files[: max(1, len(files) // 2)]:
        item.unlink()


def _running(function: str) -> bool:
    module, _, name = function.partition(":")
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == name and frame.f_globals.get("__name__") == module:
            return True
        frame = frame.f_back
    return False


def _arm(name: str, point: Point, occurrence: int | None, counts: dict[str, int]) -> None:
    """Patch the point's targets: count matching calls and, at call number `occurrence`, die as the point says."""
    for target in point.targets:
        owner, attribute = _resolve(target)
        original = getattr(owner, attribute)

        def wrapper(*args: Any, __original: Callable = original, **kwargs: Any) -> Any:
            path = point.path(args)
            if (point.match and point.match not in path) or (point.within and not _running(point.within)):
                return __original(*args, **kwargs)
            counts[name] = counts.get(name, 0) + 1
            if counts[name] != occurrence:
                return __original(*args, **kwargs)
            if point.effect == "before":
                _die()
            if point.effect == "torn-tree":
                _tear_tree(Path(path))
                _die()
            before = Path(path).stat().st_size if point.effect == "torn-file" and Path(path).is_file() else 0
            result = __original(*args, **kwargs)
            if point.effect == "torn-file":
                _tear_file(Path(path), before)
            _die()
            return result

        setattr(owner, attribute, functools.wraps(original)(wrapper))


def _child(argv: list[str], cwd: str, log: str, kill: tuple[str, int] | None, counts_file: str | None) -> None:
    """One `finetune train` in a forked child; with `kill`, it dies at that point; `counts_file` gets every point's
    number of calls (a run with no kill)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(cwd)
    import datasets
    import torch

    datasets.config.HF_DATASETS_CACHE = Path(cwd) / "datasets-cache"  # the run's own: a killed run may leave it torn

    torch.set_num_threads(1)  # the same in every run: results are bit-identical only at a fixed thread count
    counts: dict[str, int] = {}
    for name, point in POINTS.items():
        if counts_file or (kill and kill[0] == name):
            _arm(name, point, kill[1] if kill and kill[0] == name else None, counts)
    from finetune.cli import run

    code = run(argv).exit_code
    if counts_file:
        Path(counts_file).write_text(json.dumps(counts), encoding="utf-8")
    os._exit(code)


_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["kills", "finetune.cli", "finetune.pipeline", "peft", "torch"])
    return _CONTEXT


def _idle() -> None:
    os._exit(0)


def warm() -> None:
    """Start the fork server (it imports the stack once), so that a timed run measures only itself."""
    process = _context().Process(target=_idle)
    process.start()
    process.join()


@dataclass
class Child:
    """A finished child: its exit code (-9 when killed) and wall time."""

    exitcode: int
    seconds: float


def train(
    argv: Sequence[str],
    cwd: Path,
    log: Path,
    kill: tuple[str, int] | None = None,
    counts_file: Path | None = None,
    kill_after_s: float | None = None,
) -> Child:
    """Run `finetune train ARGV` in a child process; kill it at a point or after `kill_after_s` seconds."""
    process = _context().Process(
        target=_child, args=(["train", *map(str, argv)], str(cwd), str(log), kill, counts_file and str(counts_file))
    )
    start = time.perf_counter()
    process.start()
    process.join(kill_after_s)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    return Child(process.exitcode, time.perf_counter() - start)


def visible_problems(run_dir: Path) -> list[str]:
    """What in a run folder is visible (not hidden) yet half written: a weight file that does not load, a checkpoint
    without its state, a JSON file that does not parse."""
    problems = []
    if not run_dir.is_dir():
        return problems
    for item in run_dir.rglob("*"):
        parts = item.relative_to(run_dir).parts
        if any(part.startswith(".") for part in parts) or not item.is_file():
            continue
        try:
            if item.suffix == ".safetensors":
                load_file(item)
            elif item.suffix == ".json":
                json.loads(item.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - any failure to read is what this reports
            problems.append(f"{'/'.join(parts)}: {type(exc).__name__}")
    for step in (run_dir / "checkpoints").glob("step-*"):
        if not (step / STATE_FILE).is_file():
            problems.append(f"checkpoints/{step.name}: no {STATE_FILE}")
    return problems


def leftovers(run_dir: Path) -> list[str]:
    """Hidden or temporary files a finished run still holds (its marker aside)."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if (p.name.startswith(".") and p.name not in (MARKER, EVAL_RESULTS_DIR)) or p.suffix == ".tmp"
    )


def comparable(run_dir: Path) -> dict[str, Any]:
    """What an interrupted run must reproduce: its weights, metrics (less timings and memory) and log records."""
    weights = {}
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (run_dir / name).is_file():
            weights[name] = load_file(run_dir / name)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    steady = {k: v for k, v in metrics.items() if not any(mark in k for mark in VOLATILE)}
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    log = [{k: v for k, v in r.items() if not any(mark in k for mark in VOLATILE)} for r in records]
    return {"weights": weights, "metrics": steady, "log": log}


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """How an interrupted run's results differ from the uninterrupted run's (exactly, tensor by tensor)."""
    found = []
    for name, tensors in want["weights"].items():
        mine = got["weights"].get(name)
        if mine is None or mine.keys() != tensors.keys():
            found.append(f"{name}: different tensors")
            continue
        unequal = [k for k in tensors if not (mine[k] == tensors[k]).all()]
        if unequal:
            found.append(f"{name}: {len(unequal)} of {len(tensors)} tensors differ ({unequal[0]}, ...)")
    for key in ("metrics", "log"):
        if got[key] != want[key]:
            found.append(f"{key} differ")
    return found


@dataclass
class Scenario:
    """One workload killed at `kills` in turn (a point and its occurrence, or RANDOM and a time), then finished."""

    workload: str
    kills: list[tuple[str, float]]
    outcome: dict[str, Any] = field(default_factory=dict)


def recovery(run_dir: Path) -> list[str]:
    """What a user runs after a crash: --resume from a checkpoint, or start over in the folder the run created."""
    if latest_checkpoint(run_dir) is not None:
        return ["--resume"]
    return ["--overwrite"] if run_dir.is_dir() and any(run_dir.iterdir()) else []


def run_scenario(scenario: Scenario, recipe: Path, workdir: Path, reference: dict[str, Any]) -> Scenario:
    """Kill the run as `scenario` says, resume until it finishes, and record what differs from `reference`."""
    run_dir = workdir / "run"
    argv = [recipe, f"output_dir={run_dir}"]
    problems: list[str] = []
    attempts, killed, how = 0, [], []
    for index, (point, when) in enumerate(scenario.kills):
        attempts += 1
        log = workdir / f"attempt-{attempts}.log"
        how.append(" ".join(recovery(run_dir)) or "start")
        if point == RANDOM:
            child = train([*argv, *recovery(run_dir)], workdir, log, kill_after_s=when)
            while child.exitcode == 0 and when > 0.05:  # this run was faster than the one timed: start it again
                shutil.rmtree(run_dir)
                when = round(when / 2, 2)
                scenario.kills[index] = (point, when)
                child = train(argv, workdir, log, kill_after_s=when)
        else:
            child = train([*argv, *recovery(run_dir)], workdir, log, kill=(point, int(when)))
        killed.append(child.exitcode == -signal.SIGKILL)
        if child.exitcode not in (0, -signal.SIGKILL):
            problems.append(f"attempt {attempts} exited {child.exitcode} (see {log})")
        problems += [f"after kill {attempts}: {p}" for p in visible_problems(run_dir)]
        if child.exitcode == 0:
            break
    else:
        attempts += 1
        how.append(" ".join(recovery(run_dir)))
        child = train([*argv, *recovery(run_dir)], workdir, workdir / f"attempt-{attempts}.log")
        if child.exitcode != 0:
            problems.append(f"the resumed run exited {child.exitcode} (see {workdir / f'attempt-{attempts}.log'})")
    if not problems:
        problems += differences(comparable(run_dir), reference)
        problems += [f"left behind: {item}" for item in leftovers(run_dir)]
    scenario.outcome = {"killed": killed, "runs": how, "problems": problems}
    return scenario


def draw(workload: str, point: str, counts: dict[str, int], seconds: float, seed: int) -> float:
    """A random occurrence of `point` among the uninterrupted run's calls, or a random moment of its duration."""
    rng = random.Random(f"{seed}-{workload}-{point}")
    if point == RANDOM:
        return round(rng.uniform(0.05, 0.95) * seconds, 2)
    if not counts.get(point):
        raise ValueError(f"{workload}: the point {point} is never reached")
    return rng.randint(1, counts[point])


def workload_recipe(workload: str, folder: Path, model: Path, sst2: Path) -> Path:
    """A small run that checkpoints, evaluates and keeps best/ several times: `encoder` (a BERT classifier),
    `decoder` (a Llama instruction model on packed rows) or `adapter` (LoRA on a BERT classifier)."""
    rows = [line.split("\t") for line in sst2.read_text(encoding="utf-8").splitlines()[1:33]]
    best = "true" if workload != "decoder" else "false"
    lr = "1.0e-2" if workload == "encoder" else "3.0e-3"  # the encoder improves at each evaluation: best/ swaps
    train = f"train: {{epochs: 3, batch_size: 8, lr: {lr}, warmup: 2, eval_every: 4, save_every: 4, log_every: 2, "
    train += f"select_best: {best}, keep_checkpoints: 2}}"
    classifier = f"""model: {model}
task: {{type: classification, text_a: sentence, label: label, labels: [negative, positive]}}
data: {{files: {{train: {sst2}, fit: {sst2}}}, eval_split: fit, max_length: 64, reader: {{quoting: none}}}}
{train}
"""
    if workload == "encoder":
        text = classifier
    elif workload == "adapter":
        text = classifier + "peft: {r: 4}\n"
    else:
        prompts = folder / "prompts.jsonl"
        words = {"0": "negative", "1": "positive"}
        prompts.write_text(
            "".join(json.dumps({"prompt": s, "completion": words[label]}) + "\n" for s, label in rows), "utf-8"
        )
        source = f"{{files: {{train: {prompts}}}, format: prompt_completion}}"
        text = f"""model: {model}
task: {{type: instruction}}
data: {{mixture: [{source}], eval_mixture: [{source}], max_length: 64, max_eval_samples: 8}}
generation: {{max_new_tokens: 3}}
{train}
"""
    path = folder / f"{workload}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


WORKLOADS = ("encoder", "decoder", "adapter")
TWICE = {  # killed after a checkpoint, then again in the resumed run: a resume of a resume equals the uninterrupted run
    "encoder": [("optimizer-step", 6), ("log-line", 1)],
    "decoder": [("checkpoint-weights", 2), ("final-publish", 1)],
    "adapter": [("evaluation", 2), ("checkpoint-state", 1)],
}
# the fast ones, run by the suite; bench/reliability.py runs every point each workload reaches
SUITE = [
    ("encoder", "checkpoint-weights"),
    ("encoder", "best-swap"),
    ("encoder", "twice"),
    ("decoder", "final-weights"),
    ("decoder", RANDOM),
    ("adapter", "best-weights"),
    ("adapter", "tokenizing"),
    ("adapter", "checkpoint-weights"),
]


def scenario(workload: str, point: str, counts: dict[str, int], seconds: float, seed: int) -> Scenario:
    """The scenario named by `point`: a kill point or RANDOM, its occurrence or moment drawn with `seed`, or "twice"."""
    if point == "twice":
        return Scenario(workload, list(TWICE[workload]))
    return Scenario(workload, [(point, draw(workload, point, counts, seconds, seed))])
