"""Experiment tracking: the TensorBoard event file a run writes, read back with a reader of its own (TFRecord framing
and the Event protobuf), holds every scalar of log.jsonl at its step and no token (a tracker whose package is
missing: the bad-input corpus)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from conftest import run_cli
from tensorboardX.proto.event_pb2 import Event
from test_training import tiny_recipe

TOKEN = "hf_trackertoken_0123456789abcdef"


def scalars(folder: Path) -> dict[tuple[int, str], float]:
    """Every scalar in the event files directly in `folder`: {(step, tag): value}."""
    found = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):  # a record: length (u64), its CRC (u32), the bytes, their CRC (u32)
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found[(event.step, value.tag)] = value.simple_value
    return found


def test_tensorboard_receives_every_logged_scalar_and_no_token(tmp_path, tiny_bert, sst2_rows, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=2, log_every=2, eval_every=4)
    run = tmp_path / "run"
    assert run_cli("train", recipe, f"output_dir={run}", f"description=pasted by mistake {TOKEN}").exit_code == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    expected = {
        (r["step"], f"eval/{k.removeprefix('eval_')}" if k.startswith("eval_") else f"train/{k}"): v
        for r in records
        for k, v in r.items()
        if k != "step"
    }
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "eval/accuracy"} <= {
        tag for _, tag in expected
    }
    found = scalars(run / "tensorboard")
    assert found.keys() == expected.keys()
    for key, value in expected.items():  # stored as float32
        assert abs(found[key] - value) <= 1e-6 * max(1.0, abs(value)), (key, found[key], value)
    written = [p for p in (run / "tensorboard").rglob("*") if p.is_file()]
    assert any(p.name == "hparams.yml" for p in written)  # the recipe, as TensorBoard's hyperparameters
    assert any(b"description" in p.read_bytes() for p in written)
    assert not any(TOKEN.encode() in p.read_bytes() for p in written)


def test_no_tracker(tmp_path, tiny_bert, sst2_rows):
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1, report_to=[])
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 0
    assert not (tmp_path / "run" / "tensorboard").exists()
