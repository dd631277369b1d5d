"""Runs that never cost more than their last checkpoint and never destroy what is not theirs: --overwrite deletes only
run folders, a resume trains what its folder records or is refused, `best/` belongs to the checkpoint, a signal
stops a run at a checkpoint with the command that continues it, and one run folder has one writer."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
from conftest import REPO, recipe_file, run_cli
from safetensors.torch import load_file
from test_training import tiny_recipe

from finetune.engine import Engine
from finetune.rundir import MARKER, checkpoint_dirs, write_json


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dying_after(after_step, step: int):
    """Engine._after_step, after which the process is interrupted at `step` (as Ctrl-C outside the loop would)."""

    def after_then_die(self, *args):
        after_step(self, *args)
        if self.state.global_step == step:
            raise KeyboardInterrupt

    return after_then_die


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_overwrite_deletes_only_a_run_folder(tmp_path, tiny_bert, sst2_rows, capsys, monkeypatch):
    """`output_dir=<the data's folder> --overwrite` and `output_dir=. --overwrite` refuse in one line and leave every
    file as it was; a folder this tool created as a run folder is replaced."""
    data = sst2_rows.parent / "data"
    data.mkdir()
    rows = sst2_rows.rename(data / "train.tsv")
    recipe = tiny_recipe(tmp_path, tiny_bert, rows, epochs=1)
    before = snapshot(tmp_path)
    assert run_cli("train", recipe, f"output_dir={data}", "--overwrite").exit_code == 2
    assert error_lines(capsys) == [
        f"error: output_dir: {data} is not a run folder (no {MARKER} in it), so --overwrite will not delete it; "
        "name an empty or new folder"
    ]
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", recipe, "output_dir=.", "--overwrite").exit_code == 2
    assert error_lines(capsys) == [
        f"error: output_dir: . is not a run folder (no {MARKER} in it), so --overwrite will not delete it; "
        "name an empty or new folder"
    ]
    assert snapshot(tmp_path) == before

    (tmp_path / "a-file").write_text("x")
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'a-file'}").exit_code == 2
    assert error_lines(capsys) == [f"error: output_dir: {tmp_path / 'a-file'} is a file, not a folder"]

    run = tmp_path / "run"
    assert run_cli("train", recipe, f"output_dir={run}").exit_code == 0
    (run / "stale.txt").write_text("from the run before")
    assert run_cli("train", recipe, f"output_dir={run}", "--overwrite").exit_code == 0
    assert not (run / "stale.txt").exists() and (run / MARKER).is_file() and rows.is_file()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("train.lr=0.01", "train.lr (0.001 -> 0.01)"),  # kept the old lr silently before
        ("train.batch_size=16", "train.batch_size (8 -> 16)"),  # hung at the checkpoint's step before
    ],
)
def test_a_resume_that_would_train_differently_is_refused_before_anything_changes(
    change, named, tmp_path, tiny_bert, sst2_rows, capsys, monkeypatch
):
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=2, save_every=4)
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_after_step", dying_after(Engine._after_step, 4))
        assert run_cli("train", recipe, f"output_dir={run}").exit_code == 130
    capsys.readouterr()
    before = snapshot(run)
    assert run_cli("train", recipe, f"output_dir={run}", change, "--resume").exit_code == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"error: --resume: {named} changed since the checkpoint")
    assert snapshot(run) == before
    assert run_cli("train", recipe, f"output_dir={run}", "train.log_every=2", "--resume").exit_code == 0  # reporting


def test_a_damaged_checkpoint_fails_to_resume_in_one_line_and_changes_nothing(
    tmp_path, tiny_bert, sst2_rows, capsys, monkeypatch
):
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=2, save_every=4)
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_after_step", dying_after(Engine._after_step, 5))
        assert run_cli("train", recipe, f"output_dir={run}").exit_code == 130
    weights_file = run / "checkpoints" / "step-4" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    capsys.readouterr()
    before = snapshot(run)
    assert run_cli("train", recipe, f"output_dir={run}", "--resume").exit_code == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"error: --resume: the checkpoint {weights_file.parent} does not load (")
    assert snapshot(run) == before


def test_best_weights_come_from_the_checkpoint_a_resume_starts_from(tmp_path, tiny_bert, sst2_rows, monkeypatch):
    """The best evaluation is saved at every step; the run dies after step 5, past its step-4 checkpoint, with
    `best/` holding step 5's weights. The resumed run restores the checkpoint's `best/` and ends with the same
    weights, best step and metrics as the run never interrupted."""
    settings = {"epochs": 2, "batch_size": 4, "lr": 0.05, "eval_every": 1, "save_every": 4, "select_best": True}
    full = run_cli("train", tiny_recipe(tmp_path, tiny_bert, sst2_rows, **settings), f"output_dir={tmp_path / 'a'}")
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, **settings)
    run = tmp_path / "b"
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_after_step", dying_after(Engine._after_step, 5))
        assert run_cli("train", recipe, f"output_dir={run}").exit_code == 130
    assert [p.name for p in checkpoint_dirs(run)] == ["step-4"]
    kept = weights(run / "checkpoints" / "step-4" / "best")  # the best as of step 4, linked into the checkpoint
    (run / "best" / "model.safetensors").write_bytes((tmp_path / "a" / "model.safetensors").read_bytes())
    with monkeypatch.context() as patch:  # resume, and stop before the first step
        patch.setattr(Engine, "train", lambda self, *_: (_ for _ in ()).throw(KeyboardInterrupt))
        assert run_cli("train", recipe, f"output_dir={run}", "--resume").exit_code == 130
    restored = weights(run / "best")
    assert [k for k in kept if not torch.equal(kept[k], restored[k])] == []
    resumed = run_cli("train", recipe, f"output_dir={run}", "--resume")
    assert resumed.metrics["best_step"] == full.metrics["best_step"]
    a, b = weights(tmp_path / "a"), weights(run)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_at_a_checkpoint_and_says_how_to_continue(number, tmp_path, tiny_bert, sst2_rows, capsys):
    """SIGTERM (a scheduler preempting) or SIGINT (Ctrl-C) during step 3: the step ends, a checkpoint is written, the
    run exits with 128 + the signal and prints the command that continues it, which ends as an uninterrupted run."""
    settings = {"epochs": 2, "batch_size": 8, "eval_every": 4, "save_every": 1000}
    full = tiny_recipe(tmp_path, tiny_bert, sst2_rows, **settings)
    assert run_cli("train", full, f"output_dir={tmp_path / 'a'}").exit_code == 0
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, **settings)
    run = tmp_path / "b"
    step = Engine._step

    def signalled_in_step_3(self, batches):
        if self.state.global_step == 2:  # counted after the step
            os.kill(os.getpid(), number)
        return step(self, batches)

    Engine._step = signalled_in_step_3
    handler = signal.getsignal(number)
    try:
        result = run_cli("train", recipe, f"output_dir={run}")
    finally:
        Engine._step = step
    assert result.exit_code == 128 + number
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"stopped: {signal.Signals(number).name} at step 3: checkpoint saved in {run}; nothing is lost" in err
    [command] = [line.removeprefix("continue with: ") for line in err.splitlines() if line.startswith("continue")]
    assert [p.name for p in checkpoint_dirs(run)] == ["step-3"]
    assert signal.getsignal(number) == handler  # the handler from before the run, restored
    words = shlex.split(command)
    assert words[:3] == ["finetune", "train", str(recipe)] and words[-1] == "--resume"
    resumed = run_cli(*words[1:])
    a, b = weights(tmp_path / "a"), weights(run)
    assert resumed.exit_code == 0 and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_one_run_folder_has_one_writer(tmp_path, tiny_bert, sst2_rows, capsys):
    """A run folder held by a running process (its marker locked) is refused to a second run or resume."""
    import fcntl

    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    run = tmp_path / "run"
    assert run_cli("train", recipe, f"output_dir={run}").exit_code == 0
    with (run / MARKER).open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("finetune process 4242\n")
        held.flush()
        assert run_cli("train", recipe, f"output_dir={run}", "--overwrite").exit_code == 2
        [line] = error_lines(capsys)
        assert line == f"error: output_dir: {run} is in use by finetune process 4242; wait for it to end"
    assert (run / "model.safetensors").is_file()


def test_a_model_without_tokenizer_files_is_refused(tmp_path, tiny_bert, sst2_rows, capsys):
    """transformers builds a tokenizer of special tokens only for a folder without tokenizer files: every text would
    be [UNK]. Training on such a checkpoint, and evaluating a run whose tokenizer was deleted, fail in one line."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_bert / name).read_bytes())
    recipe = tiny_recipe(tmp_path, bare, sst2_rows, epochs=1)
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"error: model.name: {bare} has no tokenizer files (its tokenizer knows only its 5 special")
    assert not (tmp_path / "run").exists()

    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 0
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / "run" / name).unlink(missing_ok=True)
    assert run_cli("eval", tmp_path / "run").exit_code == 2
    assert "has no tokenizer files" in error_lines(capsys)[0]


def test_null_or_missing_text_is_refused_not_read_as_none(tmp_path, tiny_bert, capsys):
    rows = tmp_path / "rows.jsonl"
    good = [{"sentence": f"fine film {i}", "label": i % 2} for i in range(6)]
    lines = [*good, {"sentence": None, "label": 1}, {"label": 0}]
    rows.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    recipe = recipe_file(
        tmp_path,
        f"""
model: {tiny_bert}
task: {{type: classification, text_a: sentence, labels: ['0', '1']}}
data: {{files: {{train: {rows}, validation: {rows}}}}}
output_dir: {tmp_path / "run"}
""",
    )
    assert run_cli("validate", recipe).exit_code == 2
    assert "task.text_a: sentence is null or missing in row(s) 6, 7 of split 'train'" in capsys.readouterr().err
    assert run_cli("train", recipe).exit_code == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
        ("train.warmup=.inf", "train.warmup: Input should be a finite number"),
        ("train.epochs=.inf", "train.epochs: Input should be a finite number"),
        ("train.max_grad_norm=.nan", "train.max_grad_norm: Input should be a finite number"),
        ("train.adam_betas=[0.9, 1.0]", "train.adam_betas.1: Input should be less than 1"),
        ("train.adam_betas=[-0.1, 0.9]", "train.adam_betas.0: Input should be greater than or equal to 0"),
        ("train.weight_decay=1e6", "train.weight_decay: 1e+06 x train.lr 0.001 shrinks every weight past zero"),
    ],
)
def test_non_finite_and_out_of_range_settings_fail_validation(
    override, expected, tmp_path, tiny_bert, sst2_rows, capsys
):
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows)
    assert run_cli("validate", recipe, "--set", override).exit_code == 2
    assert expected in capsys.readouterr().err


def test_metrics_files_are_always_valid_json(tmp_path):
    """NaN (a constant prediction's correlation) is written as null, never as the bare NaN JSON has no word for."""
    write_json(tmp_path / "m.json", {"pearson": float("nan"), "loss": float("inf"), "acc": 0.5, "per": [float("nan")]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "pearson": None,
        "loss": None,
        "acc": 0.5,
        "per": [None],
    }


def test_predict_never_writes_over_its_input_or_into_nowhere(tmp_path, tiny_bert, sst2_rows, capsys):
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1)
    run = tmp_path / "run"
    assert run_cli("train", recipe, f"output_dir={run}").exit_code == 0
    before = sst2_rows.read_bytes()
    assert run_cli("predict", run, "--input", sst2_rows, "--output", sst2_rows).exit_code == 2
    assert error_lines(capsys) == [f"error: --output: {sst2_rows} is also the input; writing there would destroy it"]
    assert sst2_rows.read_bytes() == before
    assert run_cli("predict", run, "--input", sst2_rows, "--output", tmp_path / "no" / "p.jsonl").exit_code == 2
    assert error_lines(capsys) == [f"error: --output: the folder {tmp_path / 'no'} does not exist"]
    assert run_cli("predict", run, "--input", sst2_rows, "--output", tmp_path).exit_code == 2
    assert error_lines(capsys) == [f"error: --output: {tmp_path} is a folder; name a file"]


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_non_finite_step_never_updates_the_weights(mode, tmp_path, tiny_bert, sst2_rows, capsys, monkeypatch):
    """Step 3's loss is NaN: the run stops naming the step and the last checkpoint (step 2's), or, with
    train.nonfinite_steps: skip, skips it, counts it, and ends with finite weights."""
    from finetune.losses import Loss

    share, calls = Loss.share, []

    def nan_in_step_3(self, totals):
        calls.append(1)
        return share(self, totals) * (float("nan") if len(calls) == 3 else 1.0)

    monkeypatch.setattr(Loss, "share", nan_in_step_3)
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=1, save_every=2, nonfinite_steps=mode)
    result = run_cli("train", recipe, f"output_dir={tmp_path / 'run'}")
    if mode == "stop":
        assert result.exit_code == 2
        [line] = error_lines(capsys)
        assert line.startswith("error: train: the loss or gradient norm is not finite at step 3, so the run stopped")
        assert f"the last checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step-2'}" in line
        saved = load_file(tmp_path / "run" / "checkpoints" / "step-2" / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in saved.values())
    else:
        assert result.exit_code == 0 and result.metrics["train_skipped_steps"] == 1
        assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())


def test_pickle_only_weights_load_only_when_allowed(tmp_path, tiny_bert, sst2_rows, capsys):
    """Pickled weights can run code when loaded: a checkpoint that has only them is refused in one line unless the
    recipe opts in (model.allow_pickle), and then it trains."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    for item in tiny_bert.iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    torch.save(load_file(tiny_bert / "model.safetensors"), folder / "pytorch_model.bin")
    recipe = tiny_recipe(tmp_path, folder, sst2_rows, epochs=1)
    assert run_cli("train", recipe, f"output_dir={tmp_path / 'run'}").exit_code == 2
    [line] = error_lines(capsys)
    assert line.startswith(f"error: model.name: {folder} holds its weights only as pickle (*.bin)")
    assert not (tmp_path / "run").exists()
    allowed = run_cli("train", recipe, "model.allow_pickle=true", f"output_dir={tmp_path / 'run'}")
    assert allowed.exit_code == 0


def test_remote_code_is_named_when_trusted(tmp_path, tiny_bert, sst2_rows, capsys):
    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows)
    assert run_cli("validate", recipe, "--set", "model.trust_remote_code=true").exit_code == 0
    assert f"the modelling code in {tiny_bert}'s repository runs on this machine" in capsys.readouterr().out


def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_continue(
    tmp_path, tiny_bert, sst2_rows, capsys, monkeypatch
):
    """The disk fills while step 8's checkpoint is written (its weights half written): the run stops in one line
    naming the write and the step-4 checkpoint, removes the half-written folder, and the command it prints continues
    to the uninterrupted run's weights."""
    import accelerate.utils.other as writer

    settings = {"epochs": 2, "save_every": 4, "keep_checkpoints": 2}
    recipe, full, run = tiny_recipe(tmp_path, tiny_bert, sst2_rows, **settings), tmp_path / "full", tmp_path / "run"
    assert run_cli("train", recipe, f"output_dir={full}").exit_code == 0
    save = writer.safe_save_file

    def fills_the_disk(tensors, filename, *args, **kwargs):
        if "step-8" in str(filename):
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(28, "No space left on device")
        return save(tensors, filename, *args, **kwargs)

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(writer, "safe_save_file", fills_the_disk)
        assert run_cli("train", recipe, f"output_dir={run}").exit_code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "continue with: "))]
    assert lines == [
        f"error: writing the checkpoint {run}/checkpoints/step-8 at step 8 failed ([Errno 28] No space left on "
        f"device); the checkpoint {run}/checkpoints/step-4 is whole",
        f"continue with: finetune train {recipe} output_dir={run} --resume",
    ]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-4"]  # the half-written folder is gone
    assert run_cli(*shlex.split(lines[1].removeprefix("continue with: finetune "))).exit_code == 0
    a, b = weights(full), weights(run)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_workers_stop_at_a_checkpoint_when_their_launcher_is_killed(tmp_path, tiny_bert, sst2_rows):
    """SIGKILL to `accelerate launch` (a scheduler killing the job's main process): both workers get SIGUSR1 from
    the kernel (once per thread the launcher had: repeats must not stop them before they save), save one checkpoint
    together and exit; none is left training."""
    import subprocess
    import sys
    import time

    recipe = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=10_000, batch_size=4, log_every=1, eval_every=10**6)
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/ddp.yaml")]
    launcher = subprocess.Popen(
        [*launch, "-m", "finetune", "train", str(recipe), f"output_dir={run}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    workers = _children(launcher.pid)
    assert len(workers) == 2
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its launcher"
        time.sleep(0.2)
    assert len(checkpoint_dirs(run)) == 1  # saved by both workers at the step where the signal arrived


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"


def test_the_thread_count_is_recorded_and_a_resume_at_another_warns(
    tmp_path, tiny_bert, sst2_rows, monkeypatch, caplog
):
    recipe, run = tiny_recipe(tmp_path, tiny_bert, sst2_rows, epochs=2, save_every=4), tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with monkeypatch.context() as patch:
            patch.setattr(Engine, "_after_step", dying_after(Engine._after_step, 5))
            assert run_cli("train", recipe, f"output_dir={run}").exit_code == 130
        torch.set_num_threads(2)
        resumed = run_cli("train", recipe, f"output_dir={run}", "--resume")
    finally:
        torch.set_num_threads(threads)
    assert resumed.metrics["torch_threads"] == 2
    assert "this run trained with 1 CPU threads per process and resumes with 2" in caplog.text
