"""data.streaming: a training split read as training consumes it. Its order is a seeded permutation per epoch (all
of the split, each example once) that length grouping reorders only within runs of 50 batches; a Hub-style source
streams too, its evaluation split taken from its first rows; and a 200,000-row file trains without being read
whole (memory and rows read bounded). Resuming mid-stream: tests/test_invariance_runs.py (the streamed cases)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GLUE, REPO

from finetune import pipeline
from finetune.errors import FinetuneError
from finetune.prepare import checked, prepare
from finetune.recipe import validate_dict
from finetune.streaming import MEGABATCH, StreamOrder
from finetune.validate import check

TASK = {"type": "classification", "text_a": "sentence", "label": "label", "labels": ["0", "1"]}


def sst2_jsonl(path: Path, rows: int) -> Path:
    """The first `rows` real SST-2 training rows as JSON lines."""
    lines = (GLUE / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1 : rows + 1]
    records = [dict(zip(("sentence", "label"), line.rsplit("\t", 1))) for line in lines]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def streamed(model: Path, files: dict, seed: int = 0, **data) -> dict:
    return {
        "model": str(model),
        "task": TASK,
        "data": {"files": files, "streaming": True, "max_eval_samples": 8, **data},
        "train": {"max_steps": 2, "batch_size": 2, "seed": seed, "report_to": []},
    }


def test_stream_order_is_a_seeded_permutation_grouped_within_windows(tmp_path, tiny_bert):
    path = sst2_jsonl(tmp_path / "train.jsonl", 300)
    files = {"train": str(path), "validation": str(path)}
    whole = validate_dict({**streamed(tiny_bert, files), "data": {"files": files}, "train": {"epochs": 1}})
    expected = sorted(map(tuple, prepare(whole, checked(whole)).splits["train"]["input_ids"]))
    streams = {}
    for seed in (0, 1):
        recipe = validate_dict(streamed(tiny_bert, files, seed, shuffle_buffer=64))
        streams[seed] = prepare(recipe, checked(recipe)).splits["train"]

    def order(seed: int, epoch: int, grouped: bool = False) -> list[tuple]:
        stream = StreamOrder(streams[seed], seed, 2, grouped)
        stream.set_epoch(epoch)
        return [tuple(example["input_ids"]) for example in stream]

    first = order(0, 0)
    assert sorted(first) == expected and first != sorted(first)
    assert order(0, 0) == first  # replayed as it was
    for other in (order(0, 1), order(1, 0)):
        assert sorted(other) == expected and other != first

    grouped, window = order(0, 0, grouped=True), MEGABATCH * 2
    assert [sorted(grouped[i : i + window]) for i in range(0, 300, window)] == [
        sorted(first[i : i + window]) for i in range(0, 300, window)
    ]

    def computed(examples: list[tuple]) -> int:  # tokens in padded batches of 2
        return sum(2 * max(map(len, examples[i : i + 2])) for i in range(0, len(examples), 2))

    assert computed(grouped) < 0.85 * computed(first)


def test_a_hub_style_source_streams_and_evaluates_its_first_rows(tmp_path, tiny_bert):
    """A dataset folder (what a Hub id names) streamed through `datasets`; its validation split is read only as far as
    data.max_eval_samples."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    sst2_jsonl(folder / "train.jsonl", 40)
    sst2_jsonl(folder / "validation.jsonl", 30)
    recipe = streamed(tiny_bert, {})
    recipe["data"] = {"source": str(folder), "streaming": True, "max_eval_samples": 8}
    result = pipeline.train(validate_dict({**recipe, "output_dir": str(tmp_path / "run")}), overwrite=True)
    assert result.metrics["train_steps"] == 2 and result.metrics["num_train_samples"] == 4
    lengths = json.loads((tmp_path / "run" / "lengths.json").read_text())
    assert lengths["eval"]["examples"] == 8 and "train" not in lengths


MEMORY_CHECK = """
import json, resource, sys
import finetune.streaming as streaming
from finetune import pipeline
from finetune.recipe import validate_dict

recipes, read = json.loads(sys.argv[1]), [0]
rows = streaming._rows
def counted(*args, **kwargs):
    for row in rows(*args, **kwargs):
        read[0] += 1
        yield row
streaming._rows = counted
peaks = []
for recipe in recipes:
    read[0] = 0
    pipeline.train(validate_dict(recipe), overwrite=True)
    peaks.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, read[0]))
print(json.dumps(peaks))
"""


def test_a_200k_row_file_trains_without_being_read_whole(tmp_path, tiny_bert):
    """200,000 rows (about 45 MB): training 20 steps reads a few thousand of them (the shuffle buffer and the batches),
    and the process' peak memory grows by less than a fifth of the file over a run on a 2,000-row file before it
    (read whole, the rows would take several times the file's size)."""
    words = "the a movie film good bad great plot actor scene dull bright story".split()
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    with big.open("w", encoding="utf-8") as handle:
        for i in range(200_000):
            handle.write(json.dumps({"sentence": " ".join(words[(i * 7 + j) % 13] for j in range(40)), "label": i % 2}))
            handle.write("\n")
    small.write_text("".join(big.read_text(encoding="utf-8").splitlines(keepends=True)[:2000]), encoding="utf-8")
    recipes = []
    for n, path in enumerate((small, big)):
        recipe = streamed(tiny_bert, {"train": str(path), "validation": str(small)}, shuffle_buffer=1000)
        recipe["train"] |= {"max_steps": 20, "batch_size": 8, "eval_every": 1000}
        recipes.append({**recipe, "output_dir": str(tmp_path / f"run-{n}")})
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CHECK, json.dumps(recipes)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (small_peak, _), (big_peak, read) = json.loads(done.stdout.splitlines()[-1])
    assert read < 10_000
    assert big_peak - small_peak < 0.2 * big.stat().st_size / 2**20


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": {"epochs": 1}}, "train.max_steps: a streamed training split has no length to count epochs in"),
        ({"data": {"split": {"from": "train", "eval_share": 0.5}}}, "data.split: draws its parts from a whole split"),
        (
            {"task": {"type": "distillation", "teacher": "x", "student": TASK}},
            "task.cache_teacher: caching the teacher's logits reads the whole training split",
        ),
    ],
)
def test_what_a_stream_cannot_do_is_one_line(tmp_path, tiny_bert, change, expected):
    recipe = streamed(tiny_bert, {"train": "t.jsonl", "validation": "v.jsonl"})
    for key, value in change.items():
        recipe[key] = {**recipe[key], **value} if key == "data" else value
    if "split" in change.get("data", {}):
        recipe["data"]["files"] = {"train": "t.jsonl"}
    with pytest.raises(FinetuneError, match=expected.replace(".", r"\.")):
        validate_dict(recipe)


def test_unnamed_classes_are_refused_before_training(tmp_path, tiny_bert):
    path = sst2_jsonl(tmp_path / "train.jsonl", 20)
    recipe = streamed(tiny_bert, {"train": str(path), "validation": str(path)})
    recipe["task"] = {k: v for k, v in TASK.items() if k != "labels"}
    assert check(validate_dict(recipe)).problems == [
        "task.labels: a streamed training split is not read whole before training, so its label values cannot name "
        "the classes; list them (task.labels: [...])"
    ]
