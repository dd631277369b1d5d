"""`finetune sweep`: the grid's cells are real runs whose metrics the report carries unchanged; the majority-class
reference and the best setting per size agree with values derived here; a second run trains nothing."""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter

import pytest
from conftest import run_cli
from test_training import tiny_recipe

from finetune.errors import FinetuneError
from finetune.sweep import settings_grid


def test_sweep_trains_the_grid_once_and_reports_it(tmp_path, tiny_bert, sst2_rows, capsys):
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1, eval_every=1000, report_to=[])
    output = tmp_path / "sweep"
    argv = ["sweep", recipe, "--fractions", "0.25,1", "--seeds", "2", "--set", "train.lr=1e-3,1e-2"]
    result = run_cli(*argv, "--output", output)
    assert result.exit_code == 0
    report = json.loads((output / "sweep.json").read_text())
    cells = report["cells"]
    assert sorted({c["examples"] for c in cells}) == [8, 32] and len(cells) == 8  # 32 rows: a quarter, all
    for cell in cells:  # each a real run folder whose metrics the report carries as they are
        metrics = json.loads((output / cell["folder"] / "metrics.json").read_text())
        assert cell["metrics"] == metrics and metrics["num_train_samples"] == cell["examples"]
        assert f"lr: {float(cell['setting']['train.lr'])}" in (output / cell["folder"] / "recipe.yaml").read_text()
    seeds = {c["seed"] for c in cells}
    assert seeds == {42, 43}
    for group in report["summary"]:
        values = [
            c["metrics"]["accuracy"]
            for c in cells
            if c["examples"] == group["examples"] and c["setting"] == group["setting"]
        ]
        assert group["mean"] == pytest.approx(statistics.fmean(values)) and group["seeds"] == 2
    for size, setting in report["best"].items():
        means = {g["setting"]["train.lr"]: g["mean"] for g in report["summary"] if g["examples"] == int(size)}
        assert means[setting["train.lr"]] == max(means.values())
    labels = [line.split("\t")[-1] for line in sst2_rows.read_text().splitlines()[1:]]
    top = Counter(labels).most_common(1)[0]
    assert report["references"]["majority"] == pytest.approx(top[1] / len(labels))  # the eval split is the same rows
    assert (output / "sweep.png").stat().st_size > 0 and "| 32 |" in (output / "sweep.md").read_text()

    before = {p: p.stat().st_mtime_ns for p in output.glob("*/model.safetensors")}
    capsys.readouterr()
    assert run_cli(*argv, "--output", output).exit_code == 0
    assert "8 cells, 8 already finished" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in output.glob("*/model.safetensors")} == before
    capsys.readouterr()
    assert run_cli(*argv, "--output", output, "train.weight_decay=0.5").exit_code == 2
    assert "this cell was trained from another recipe" in capsys.readouterr().err
    assert run_cli(*argv, "--output", tmp_path / "stream", "data.streaming=true", "train.max_steps=2").exit_code == 2
    assert "data.streaming: a sweep reads the training split whole" in capsys.readouterr().err
    assert not (tmp_path / "stream").exists()


def test_settings_grid_splits_at_top_level_commas():
    assert settings_grid(["train.lr=1e-5,3e-5", "task.labels=[a,b],[b,a]"]) == [
        {"train.lr": "1e-5", "task.labels": "[a,b]"},
        {"train.lr": "1e-5", "task.labels": "[b,a]"},
        {"train.lr": "3e-5", "task.labels": "[a,b]"},
        {"train.lr": "3e-5", "task.labels": "[b,a]"},
    ]
    with pytest.raises(FinetuneError, match="expected key.path=value1,value2"):
        settings_grid(["train.lr"])


def test_jobs_train_cells_as_processes(tmp_path, tiny_bert, sst2_rows, capsys):
    """--jobs 2: two `finetune train` processes at once, each with its share of the cores; a failing cell stops the
    sweep and names its log."""
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1, eval_every=1000, report_to=[])
    output = tmp_path / "sweep"
    assert run_cli("sweep", recipe, "--seeds", "2", "--jobs", "2", "--output", output).exit_code == 0
    cells = json.loads((output / "sweep.json").read_text())["cells"]
    assert [c["seed"] for c in cells] == [42, 43]
    assert all(c["metrics"]["torch_threads"] == max(1, os.cpu_count() // 2) for c in cells)  # the cores shared
    capsys.readouterr()
    failing = ["--set", "train.precision=fp16", "--output", tmp_path / "failing"]  # valid, refused on a CPU
    assert run_cli("sweep", recipe, "--jobs", "2", *failing).exit_code == 2
    log = tmp_path / "failing" / "n32-precision=fp16-seed42.log"
    assert f"sweep: cell n32-precision=fp16-seed42 failed; see {log}" in capsys.readouterr().err
    assert "fp16 needs a CUDA GPU" in log.read_text()
