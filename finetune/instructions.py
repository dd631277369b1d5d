"""Instruction data: each source's rows read in its native format and made into conversations, the mixture drawn
from them, and what was kept and skipped, per source and task.

Every example becomes `{"messages": [{"role", "content"}...], "references": [...], "source", "task"}`:

- alpaca (instruction, input, output): the prompt is one of the templates (drawn per example, seeded) filled
  with the instruction and input, after k exemplars from the source's other training rows (never a held-out
  one) when `task.shots` asks;
- prompt_completion (prompt, completion): as they are (a trailing `<|endoftext|>`, as T0's files carry, dropped);
- messages: OpenAI `messages` ({role, content}) or ShareGPT `conversations` ({from, value}) with every turn;
- natural_instructions: Super-NaturalInstructions task files; each instance's prompt is the task's Definition,
  then k of its Positive Examples, then the input, in one of the templates; all of its outputs are references.

Mixing follows Flan: each source (each natural_instructions task) gives at most `max_examples` examples, then
`weight` repeats or thins them. Rows that cannot teach anything (no assistant turn, an empty response) are
skipped and counted.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError, first_line
from finetune.mirrors import resolve_dataset
from finetune.recipe.data_section import ReaderSpec, SourceSpec
from finetune.recipe.schema import Recipe
from finetune.sources import HubDataset, locate, read_rows

log = logging.getLogger(__name__)

ALPACA_TEMPLATES = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
    "{instruction}\n\n{input}",
    "Instruction: {instruction}\nInput: {input}\nAnswer:",
]
NI_TEMPLATES = [  # the Super-NaturalInstructions paper's layout and two rephrasings
    "Definition: {definition}\n\n{examples}Now complete the following example -\nInput: {input}\nOutput:",
    "{definition}\n\n{examples}Input: {input}\nOutput:",
    "Task: {definition}\n\n{examples}Question: {input}\nAnswer:",
]
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# tool calls are the assistant's turns, their results come back as the user's
SHAREGPT_ROLES |= {"function_call": "assistant", "observation": "user", "tool": "user"}
FIELDS = {  # a format's fields, renamed by a source's `columns`
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
}
END_OF_TEXT = "<|endoftext|>"


def load_mixture(recipe: Recipe) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The train and eval examples of an instruction recipe and the mixture report (per source: rows read,
    examples kept, skipped and why)."""
    task, data, seed = recipe.task, recipe.data, recipe.train.seed
    train, evaluation, report = [], [], {"train": {}, "eval": {}}
    for spec in data.mixture:
        examples, held, skipped = read_source(spec, spec.split, task.templates, task.shots, seed, spec.held_out)
        kept = mix(examples, spec, seed)
        train += kept
        evaluation += held if data.eval_mixture is None else []
        report["train"][spec.label] = _source_report(examples, kept, skipped)
    if task.shots and data.eval_mixture:
        log.warning(
            "task.shots: %d applies to the training sources; the held-out tasks of data.eval_mixture are judged "
            "zero-shot, as the Flan papers judge them",
            task.shots,
        )
    for spec in data.eval_mixture or []:
        examples, _, skipped = read_source(spec, spec.split, task.templates, 0, seed)  # held-out tasks: zero-shot
        kept = mix(examples, spec.model_copy(update={"weight": 1.0}), seed)
        evaluation += kept
        report["eval"][spec.label] = _source_report(examples, kept, skipped)
    if not evaluation:
        raise FinetuneError(
            "data.eval_mixture: name the evaluation sources (held-out tasks), or keep rows of a training source "
            "apart with held_out: N"
        )
    if not train:
        raise FinetuneError("data.mixture: the sources gave no training examples")
    random.Random(seed).shuffle(train)
    return {"train": train, "eval": evaluation}, report


def _source_report(examples: list[dict], kept: list[dict], skipped: Counter) -> dict[str, Any]:
    tasks = Counter(e["task"] for e in kept)
    return {
        "examples_available": len(examples),
        "examples_used": len(kept),
        "skipped": dict(skipped),
        **({"tasks": dict(sorted(tasks.items()))} if len(tasks) > 1 else {}),
    }


def mix(examples: list[dict], spec: SourceSpec, seed: int) -> list[dict]:
    """A source's share: at most `max_examples` per task (a seeded draw), then `weight` copies of them (a
    fraction of a copy drawn at random)."""
    by_task: dict[str, list[dict]] = {}
    for example in examples:
        by_task.setdefault(example["task"], []).append(example)
    capped = []
    for rows in by_task.values():
        capped += _draw(rows, min(spec.max_examples or len(rows), len(rows)), seed)
    whole, fraction = divmod(spec.weight, 1)
    return capped * int(whole) + _draw(capped, round(fraction * len(capped)), seed + 1)


def _draw(rows: list[dict], count: int, seed: int) -> list[dict]:
    if count >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, count)


def read_source(
    spec: SourceSpec, split: str, templates: list[str] | None, shots: int, seed: int, held_out: int = 0
) -> tuple[list[dict], list[dict], Counter]:
    """A source's examples as conversations: those to train on, `held_out` kept apart (a seeded draw), and the
    count of rows skipped by reason. Alpaca's k-shot exemplars are drawn from the training rows only, so that no
    held-out row is shown in a prompt."""
    rng = random.Random(seed)
    if spec.format == "natural_instructions":  # its exemplars are the task files' Positive Examples, not instances
        examples, skipped = _natural_instructions(spec, split, templates or NI_TEMPLATES, shots, rng)
        return (*_hold_out(examples, held_out, seed), skipped)
    rows = [_renamed(row, spec) for row in _rows(spec, split)]
    if not rows:
        raise FinetuneError(f"data.mixture ({spec.label}): split {split!r} has no rows")
    missing = [f for f in FIELDS[spec.format] if f not in rows[0] and not _is_sharegpt(spec, rows[0], f)]
    if missing:
        raise FinetuneError(
            f"data.mixture ({spec.label}): the {spec.format} format reads {', '.join(missing)}; the rows have "
            f"{', '.join(rows[0])} (map names with columns: {{{missing[0]}: ...}})"
        )
    examples, skipped, origins = [], Counter(), []
    for row in rows:
        template = rng.choice(templates or ALPACA_TEMPLATES) if spec.format == "alpaca" else ""
        if spec.format == "alpaca":
            messages = _alpaca(row, template, [])
        elif spec.format == "prompt_completion":
            completion = str(row["completion"]).removesuffix(END_OF_TEXT).rstrip()
            messages = [{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": completion}]
        else:
            messages = ending_with_a_reply(_conversation(row, spec))
        reason = skip_reason(messages)
        if reason:
            skipped[reason] += 1
            continue
        examples.append(
            {"messages": messages, "references": [messages[-1]["content"]], "source": spec.label, "task": spec.label}
        )
        origins.append((row, template))
    train, held = _hold_out(examples, held_out, seed)
    if spec.format == "alpaca" and shots:
        # the held-out rows are settled first: exemplars come from the training rows, for held-out prompts too
        training = {id(e) for e in train}
        pool = [row for example, (row, _) in zip(examples, origins) if id(example) in training]
        for example, (row, template) in zip(examples, origins):
            drawn = rng.sample(pool, min(shots + 1, len(pool)))  # one spare, in case the row itself is drawn
            example["messages"] = _alpaca(row, template, [r for r in drawn if r is not row][:shots])
    return train, held, skipped


def _hold_out(examples: list[dict], count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(the examples to train on, `count` of them kept apart: a seeded draw)."""
    held = _draw(examples, min(count, len(examples)), seed) if count else []
    ids = {id(e) for e in held}
    return [e for e in examples if id(e) not in ids], held


def ending_with_a_reply(messages: list[dict] | None) -> list[dict] | None:
    """The conversation up to its last assistant turn (turns after it teach nothing)."""
    replies = [i for i, m in enumerate(messages or []) if m["role"] == "assistant"]
    return messages[: replies[-1] + 1] if replies else messages


def skip_reason(messages: list[dict] | None) -> str:
    """Why a conversation (ending with its last reply) cannot teach anything ("" when it can)."""
    if messages is None:
        return "unknown role"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    if not messages[-1]["content"].strip():
        return "empty response"
    if not any(m["content"].strip() for m in messages if m["role"] != "assistant"):
        return "empty prompt"
    return ""


def _rows(spec: SourceSpec, split: str) -> list[dict]:
    located = locate(spec.source, spec.subset, spec.files, ReaderSpec())
    if isinstance(located, HubDataset):
        from datasets import load_dataset

        try:
            return list(load_dataset(located.path, located.name, split=split))
        except Exception as exc:  # datasets raises many types (connection, missing config, missing split)
            raise FinetuneError(f"data.mixture ({spec.label}): cannot load {located.path}: {first_line(exc)}") from None
    if split not in located.files:
        raise FinetuneError(f"data.mixture ({spec.label}): no split {split!r} (splits: {', '.join(located.files)})")
    return list(read_rows(located, split, located.format_of(split)))


def _renamed(row: dict, spec: SourceSpec) -> dict:
    if not spec.columns:
        return row
    names = {theirs: ours for ours, theirs in spec.columns.items()}
    return {names.get(k, k): v for k, v in row.items()}


def _is_sharegpt(spec: SourceSpec, row: dict, field: str) -> bool:
    return spec.format == "messages" and field == "messages" and "conversations" in row


def _conversation(row: dict, spec: SourceSpec) -> list[dict] | None:
    if "messages" in row:
        turns = [(m.get("role"), m.get("content")) for m in row["messages"]]
    else:
        turns = [(SHAREGPT_ROLES.get(m.get("from")), m.get("value")) for m in row["conversations"]]
    if any(role not in ("system", "user", "assistant") for role, _ in turns):
        return None
    return [{"role": role, "content": str(content or "")} for role, content in turns]


def _alpaca(row: dict, template: str, exemplars: list[dict]) -> list[dict]:
    blocks = [_fill(template, r, "task.templates") + f" {r['output']}" for r in exemplars]
    prompt = "\n\n".join([*blocks, _fill(template, row, "task.templates")])
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}]


def _fill(template: str, fields: dict, key: str) -> str:
    try:
        text = template.format_map({k: "" if v is None else v for k, v in fields.items()})
    except (KeyError, IndexError) as exc:
        raise FinetuneError(f"{key}: the template names {exc}, which the rows lack ({', '.join(fields)})") from None
    return "\n".join(line for line in text.split("\n") if line.strip() not in ("### Input:", "Input:")).strip()


def _natural_instructions(
    spec: SourceSpec, split: str, templates: list[str], shots: int, rng: random.Random
) -> tuple[list[dict], Counter]:
    files = _ni_files(spec)
    tests = set(files["test_tasks"].read_text(encoding="utf-8").split()) if "test_tasks" in files else set()
    if split not in ("train", "test", "all"):
        raise FinetuneError(
            f"data.mixture ({spec.label}): natural_instructions reads split train, test or all, not {split}"
        )
    if split == "test" and not tests:
        raise FinetuneError(
            f"data.mixture ({spec.label}): split test needs files.test_tasks, the held-out task list (split all "
            "reads every task file)"
        )
    examples, skipped, found = [], Counter(), []
    for path in files["tasks"]:
        name = _task_name(path)
        if split != "all" and (name in tests) != (split == "test"):
            continue
        if spec.tasks is not None and name not in spec.tasks:
            continue
        found.append(name)
        task = json.loads(path.read_text(encoding="utf-8"))
        definition = task["Definition"]
        definition = " ".join(definition) if isinstance(definition, list) else str(definition)
        positives = task.get("Positive Examples") or []
        shown = "".join(
            f"Positive Example {i + 1} -\nInput: {p['input']}\nOutput: {p['output']}\n\n"
            for i, p in enumerate(positives[:shots])
        )
        for instance in task["Instances"]:
            outputs = [
                o for o in (instance["output"] if isinstance(instance["output"], list) else [instance["output"]])
            ]
            if not any(str(o).strip() for o in outputs):
                skipped["empty response"] += 1
                continue
            fields = {"definition": definition, "examples": shown, "input": instance["input"]}
            prompt = _fill(rng.choice(templates), fields, "task.templates")
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(outputs[0])}]
            examples.append(
                {"messages": messages, "references": [str(o) for o in outputs], "source": spec.label, "task": name}
            )
    if spec.tasks is not None and set(spec.tasks) - set(found):
        missing = ", ".join(sorted(set(spec.tasks) - set(found)))
        raise FinetuneError(f"data.mixture ({spec.label}): no {split} task file for {missing}")
    if not found:
        raise FinetuneError(f"data.mixture ({spec.label}): no {split} tasks among {len(files['tasks'])} task files")
    return examples, skipped


def _ni_files(spec: SourceSpec) -> dict[str, Any]:
    """The task files (a glob) and the held-out task list of a natural_instructions source."""
    if spec.files is not None:
        files = {k: Path(v).expanduser() for k, v in spec.files.items()}
    else:
        mirrored = resolve_dataset(spec.source, spec.subset)
        if mirrored is None:
            raise FinetuneError(
                f"data.mixture ({spec.label}): {spec.source} has no local copy; natural_instructions reads task "
                "files (files: {tasks: path/*.json, test_tasks: path/test_tasks.txt})"
            )
        files = dict(mirrored.files)
    if "tasks" not in files:
        raise FinetuneError(
            f"data.mixture ({spec.label}): natural_instructions needs files.tasks, a folder or a glob of task files"
        )
    pattern = Path(files["tasks"]) / "*.json" if Path(files["tasks"]).is_dir() else files["tasks"]  # a folder: all
    found: dict[str, Any] = {"tasks": sorted(map(Path, glob.glob(str(pattern))), key=_task_name)}
    if "test_tasks" in files:
        found["test_tasks"] = files["test_tasks"]
    return found


def _task_name(path: Path) -> str:
    return path.stem.removeprefix("testset_")  # the release names held-out task files testset_<task>
