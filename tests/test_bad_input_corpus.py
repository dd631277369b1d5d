"""The bad-input corpus (tests/bad_input/): bad recipe files, bad overrides on a valid recipe and bad data files,
each listed with the line it must fail with. Every case: exit code 2, that line among stderr's `error:` lines, no
traceback, no file created or changed. Cases that need a run folder are at the end of this file."""

from __future__ import annotations

import shlex
from pathlib import Path
from string import Template

import pytest
from conftest import run_cli

CORPUS = Path(__file__).parent / "bad_input"
TASKS = {  # the task sections data.tsv names
    "classification": "{type: classification, text_a: sentence, label: label}",
    "named": "{type: classification, text_a: sentence, label: label, labels: [negative, positive]}",
    "regression": "{type: regression, text_a: sentence, label: label}",
    "choice": "{type: multiple_choice, context: q, choices: options, label: answer}",
}


def manifest(name: str) -> list[tuple[str, ...]]:
    """The rows of a tab-separated manifest, comments aside."""
    lines = (CORPUS / name).read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines if line and not line.startswith("#")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def workspace(tmp_path, tiny_bert) -> dict[str, str]:
    """A folder with good data files, the tiny model's path, and the corpus' templates filled in."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\nfine\tpositive\nawful\tnegative\n", encoding="utf-8")
    (data / "dev.tsv").write_text("sentence\tlabel\ngood\tpositive\nbad\tnegative\n", encoding="utf-8")
    return {"MODEL": str(tiny_bert), "DATA": str(data), "root": str(tmp_path)}


def fails_cleanly(argv: list, expected: str, folder: Path, capsys) -> None:
    capsys.readouterr()
    before = snapshot(folder)
    result = run_cli(*argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2, err
    assert any(expected in line for line in lines), (expected, lines)
    assert snapshot(folder) == before


def fill(text: str, workspace: dict[str, str]) -> str:
    return Template(text).safe_substitute(workspace)


@pytest.mark.parametrize(("overrides", "expected"), manifest("overrides.tsv"), ids=lambda v: v[:40])
def test_bad_override(overrides, expected, workspace, capsys):
    root = Path(workspace["root"])
    recipe = root / "base.yaml"
    recipe.write_text(fill((CORPUS / "base.yaml").read_text(encoding="utf-8"), workspace), encoding="utf-8")
    argv = ["train", recipe, f"output_dir={root / 'run'}", *shlex.split(fill(overrides, workspace))]
    fails_cleanly(argv, fill(expected, workspace), root, capsys)


@pytest.mark.parametrize(("file", "expected"), manifest("recipes.tsv"))
def test_bad_recipe_file(file, expected, workspace, capsys):
    root = Path(workspace["root"])
    for source in (CORPUS / "recipes").iterdir():  # extends: names its siblings
        (root / source.name).write_bytes(fill(source.read_bytes().decode("latin-1"), workspace).encode("latin-1"))
    fails_cleanly(["train", root / file, f"output_dir={root / 'run'}"], fill(expected, workspace), root, capsys)


@pytest.mark.parametrize(("file", "task", "expected"), manifest("data.tsv"))
def test_bad_data_file(file, task, expected, workspace, capsys):
    root = Path(workspace["root"])
    data = root / "data" / file
    data.write_bytes((CORPUS / "data" / file).read_bytes())
    recipe = root / "recipe.yaml"
    recipe.write_text(
        f"model: {workspace['MODEL']}\ntask: {TASKS[task]}\n"
        f"data: {{files: {{train: {data}, validation: {data}}}, reader: {{quoting: none}}}}\n",
        encoding="utf-8",
    )
    fails_cleanly(["train", recipe, f"output_dir={root / 'run'}"], fill(expected, workspace), root, capsys)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, tiny_bert_64, tiny_llama) -> dict[str, Path]:
    """A plain run, a LoRA run and a run with a checkpoint, one step each, on a tiny BERT; the same with a wider
    BERT; the models."""
    root = tmp_path_factory.mktemp("bad-commands")
    rows = root / "train.tsv"
    rows.write_text("sentence\tlabel\nfine\tpositive\nawful\tnegative\n", encoding="utf-8")
    found = {"root": root, "bert": tiny_bert, "bert64": tiny_bert_64, "llama": tiny_llama, "rows": rows}
    for name, model, extra in [
        ("plain", tiny_bert, ""),
        ("lora", tiny_bert, "peft: {r: 2}\n"),
        ("checkpointed", tiny_bert, ""),
        ("checkpointed64", tiny_bert_64, ""),
    ]:
        recipe = root / f"{name}.yaml"
        recipe.write_text(
            f"model: {model}\ntask: {TASKS['classification']}\n"
            f"data: {{files: {{train: {rows}, validation: {rows}}}}}\n"
            f"train: {{max_steps: 2, batch_size: 2, save_every: 1}}\n{extra}",
            encoding="utf-8",
        )
        assert run_cli("train", recipe, f"output_dir={root / name}").exit_code == 0
        found[name] = root / name
    return found


def _command_case(case: str, runs: dict[str, Path], folder: Path) -> tuple[list, str]:
    """(the command's arguments, the line expected) for a bad command on a run folder; copies go into `folder`."""
    import shutil

    if case == "eval on a folder that is not a run":
        (folder / "notes.txt").write_text("not a run")
        return ["eval", folder], f"{folder}: not a run folder (no recipe.yaml here or above)"
    if case == "eval on a missing folder":
        return ["eval", folder / "missing"], "missing: not a run folder"
    if case.startswith("predict"):
        inputs = {"missing columns": "in.jsonl", "unknown suffix": "in.xlsx", "missing input": "nope.jsonl"}
        path = folder / inputs[case.removeprefix("predict ")]
        if case != "predict missing input":
            path.write_text('{"text": "x"}\n')
        expected = {
            "predict missing columns": "--input: " + str(path) + " lacks column(s) sentence",
            "predict unknown suffix": "--input: in.xlsx is not one of .csv, .tsv, .json, .jsonl, .parquet",
            "predict missing input": f"file not found: {path}",
        }[case]
        return ["predict", runs["plain"], "--input", path], expected
    if case == "merge a run without an adapter":
        return ["merge", runs["plain"], folder / "merged"], "no adapter here (adapter_config.json missing)"
    if "adapter" in case:
        run = shutil.copytree(runs["lora"], folder / "lora")
        if "another base" in case:
            for name in ("adapter_config.json", "recipe.yaml"):
                (run / name).write_text((run / name).read_text().replace(str(runs["bert"]), str(runs["bert64"])))
            expected = f"{run}: cannot load the adapter: Error(s) in loading state_dict for PeftModel"
        else:
            weights = run / "adapter_model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
            expected = f"{run}: cannot load the adapter: Error while deserializing header"
        return (["eval", run] if case.startswith("eval") else ["merge", run, folder / "merged"]), expected
    if case == "resume from another recipe's checkpoint":
        run = shutil.copytree(runs["checkpointed"], folder / "run")
        shutil.rmtree(run / "checkpoints" / "step-2")
        shutil.copytree(runs["checkpointed64"] / "checkpoints" / "step-2", run / "checkpoints" / "step-2")
        return ["train", runs["root"] / "checkpointed.yaml", f"output_dir={run}", "--resume"], (
            f"--resume: the checkpoint {run}/checkpoints/step-2 does not load"
        )
    if case == "--overwrite through a symbolic link":
        run = shutil.copytree(runs["plain"], folder / "run")
        (folder / "link").symlink_to(run)
        return ["train", runs["root"] / "plain.yaml", f"output_dir={folder / 'link'}", "--overwrite"], (
            f"output_dir: {folder / 'link'} is a symbolic link; --overwrite deletes only a run folder"
        )
    if case == "output_dir /dev/null":
        return ["train", runs["root"] / "plain.yaml", "output_dir=/dev/null"], "output_dir: /dev/null is a file"
    assert case == "max_length 1 on a causal LM"
    recipe = folder / "lm.yaml"
    recipe.write_text(
        f"model: {runs['llama']}\ntask: {{type: language_modeling, text_a: sentence}}\n"
        f"data: {{files: {{train: {runs['rows']}, validation: {runs['rows']}}}, max_length: 1}}\n",
        encoding="utf-8",
    )
    return ["train", recipe, f"output_dir={folder / 'run'}"], "data.max_length: 1 leaves no example in the train"


@pytest.mark.parametrize(
    "case",
    [
        "eval on a folder that is not a run",
        "eval on a missing folder",
        "predict missing columns",
        "predict unknown suffix",
        "predict missing input",
        "merge a run without an adapter",
        "eval an adapter for another base",
        "merge an adapter for another base",
        "eval a truncated adapter",
        "merge a truncated adapter",
        "resume from another recipe's checkpoint",
        "--overwrite through a symbolic link",
        "output_dir /dev/null",
        "max_length 1 on a causal LM",
    ],
)
def test_bad_command_on_a_run(case, runs, tmp_path, capsys):
    argv, expected = _command_case(case, runs, tmp_path)
    before = snapshot(runs["root"])
    fails_cleanly(argv, expected, tmp_path, capsys)
    assert snapshot(runs["root"]) == before
