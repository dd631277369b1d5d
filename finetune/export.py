"""Export: the model card of a run folder, the merged full model of an adapter run, and the push to the Hub."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from pydantic import ValidationError

from finetune.adapters import ADAPTER_CONFIG, is_adapter_dir
from finetune.checkpoints import BEST_DIR, FINAL_DIR
from finetune.errors import FinetuneError, first_line, redact
from finetune.loaded_run import LoadedRun, load_run
from finetune.mirrors import PACKAGED, base_record, resolve_model
from finetune.plots import PLOT_FILE
from finetune.recipe import Recipe, dump_recipe, load_recipe
from finetune.recipe.schema import HubSpec
from finetune.rundir import (
    BASE_FILE,
    CHECKPOINTS,
    LOG_FILE,
    MARKER,
    METRICS_FILE,
    check_writable,
    find_recipe,
    write_recipe,
)
from finetune.tasks import Task

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
# What a run folder uploads: the model or adapter, its head, the tokenizer, the card, recipe, metrics and curves.
# the run's own hidden files (its marker, half-written folders) stay home; .eval_results/ goes up
UPLOAD_IGNORE = [
    f"{CHECKPOINTS}/*",
    f"{BEST_DIR}/*",
    MARKER,
    ".tmp-*",
    "*/.tmp-*",
    ".old-*",
    f"{FINAL_DIR}/*",
    "*.tmp",
    "eval_*.json",
    LOG_FILE,
]
EVAL_RESULTS_DIR = ".eval_results"  # the Hub's evaluation results: shown on the model page, gathered by benchmarks
HUB_ORIGINS = ("hub", "mirror")  # the bases that are the Hub's own weights (a mirror holds them as the user vouches)


def write_model_card(
    run_dir: Path, recipe: Recipe, metrics: dict[str, Any], task: Task, merged_from: Path | None = None
) -> Path:
    """README.md with the Hub's metadata header (base model, library, tags, datasets, metric values), the
    training settings, results, size report, the exact recipe and how to load the model. Only a base that is the
    Hub's own weights is named as `base_model`; `finetune_base` says what the base was, whatever it was."""
    adapter = is_adapter_dir(run_dir)
    spec = recipe.task
    metric_names = [m for m in spec.metric_names if m in metrics]
    dataset = recipe.data.source
    base = _base_of(run_dir, recipe)
    data = ModelCardData(
        model_name=recipe.name,
        base_model=base["name"] if base["origin"] in HUB_ORIGINS else None,
        finetune_base=base,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=task.pipeline_tag,
        tags=[
            "finetune",
            spec.type,
            *(["lora"] if recipe.peft else []),
            *([f"{recipe.quantize.bits}-bit"] if recipe.quantize else []),
        ],
        datasets=[dataset] if dataset else None,
        metrics=metric_names,
        eval_results=[
            EvalResult(
                task_type=task.pipeline_tag,
                dataset_type=dataset or "local",
                dataset_name=" ".join(filter(None, [dataset or "local files", recipe.data.subset])),
                dataset_config=recipe.data.subset,
                dataset_split=recipe.data.eval_split,
                metric_type=name,
                metric_value=metrics[name],
            )
            for name in metric_names
        ]
        or None,
    )
    body = _card_body(recipe, base, metrics, _load_snippet(recipe, task, adapter), merged_from)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = run_dir / CARD_FILE
    card.save(path)
    if dataset and metric_names:
        _write_eval_results(run_dir, recipe, metric_names[0], metrics[metric_names[0]])
    return path


def _write_eval_results(run_dir: Path, recipe: Recipe, metric: str, value: float) -> None:
    """`.eval_results/<dataset>.yaml`, the Hub's format: one score on a Hub dataset (its leaderboard gathers it
    when the dataset is a registered benchmark), the selection metric on the evaluation split."""
    data = recipe.data
    entry = {
        "dataset": {"id": data.source, **({"task_id": data.subset} if data.subset else {})},
        "value": value,
        "notes": f"{metric} on the {data.eval_split} split, fine-tuned with finetune ({recipe.task.type})",
    }
    folder = run_dir / EVAL_RESULTS_DIR
    folder.mkdir(exist_ok=True)
    name = data.subset or data.source.rpartition("/")[2]
    (folder / f"{name}.yaml").write_text(yaml.safe_dump([entry], sort_keys=False), encoding="utf-8")


def _base_of(run_dir: Path, recipe: Recipe) -> dict[str, Any]:
    """The base recorded in the run folder at training time (resolved now for a run that predates the record)."""
    path = run_dir / BASE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return base_record(resolve_model(recipe.model.name), recipe.model.revision)


def _card_body(
    recipe: Recipe, base: dict[str, Any], metrics: dict[str, Any], load_snippet: str, merged_from: Path | None
) -> str:
    task, train = recipe.task, recipe.train
    source = recipe.data.source or "local files"
    what = f"a LoRA adapter (r={recipe.peft.r}, alpha={recipe.peft.alpha})" if recipe.peft else "a fine-tuned model"
    if recipe.quantize:
        what += f" trained on a {recipe.quantize.bits}-bit base"
    results = "\n".join(f"| {k} | {v} |" for k, v in metrics.items() if k in task.metric_names or k == "eval_loss")
    sizes = (
        "total_parameters",
        "trainable_parameters",
        "trainable_share",
        "model_footprint_mb",
        "adapter_size_mb",
        "model_size_mb",
        "peak_rss_mb",
        "peak_gpu_memory_mb",
    )
    size_rows = "\n".join(f"| {k} | {metrics[k]} |" for k in sizes if k in metrics)
    merged = f"\nMerged from the adapter run `{merged_from.name}` (`finetune merge`).\n" if merged_from else ""
    return f"""
# {recipe.name}

{recipe.description or f"{task.type} with {recipe.model.name}."}

This is {what} of {_model_link(base)} for **{task.type}**
on {source}{" (" + recipe.data.subset + ")" if recipe.data.subset else ""}, trained with finetune from the
recipe below.{merged}

## Results ({recipe.data.eval_split} split)

| metric | value |
|---|---|
{results}

## Training

| setting | value |
|---|---|
| epochs / steps | {train.epochs} / {metrics.get("train_steps", "-")} |
| batch size per device x accumulation | {train.batch_size} x {train.grad_accum} |
| learning rate, warmup, weight decay | {train.lr}, {train.warmup}, {train.weight_decay} |
| precision | {train.precision} |
| training examples | {metrics.get("num_train_samples", "-")} |
| training time | {metrics.get("train_runtime_s", "-")} s |
| seed | {train.seed} |

## Size

| quantity | value |
|---|---|
{size_rows}

## How to load

```python
{load_snippet}
```

## Recipe

```yaml
{dump_recipe(recipe).strip()}
```
"""


def _model_link(base: dict[str, Any]) -> str:
    """The base by name, linked when it is the Hub's, and what it is when it is not fetched from the Hub."""
    name = base["name"]
    link = f"[`{name}`](https://huggingface.co/{name})" if base["origin"] in HUB_ORIGINS else f"`{name}`"
    return link if base["origin"] == "hub" else f"{link} ({base['about']})"


def _load_snippet(recipe: Recipe, task: Task, adapter: bool) -> str:
    repo = recipe.hub.repo if recipe.hub else "REPO"
    if task.gpt1_ids is not None or (adapter and recipe.model.name.startswith(PACKAGED)):
        what = "the decoder, its GPT-1 head and tokens" if task.gpt1_ids is not None else "finetune resolves the base"
        return (
            f"from huggingface_hub import snapshot_download  # {what}\n"
            "from finetune.pipeline import predict\n"
            f'predict(snapshot_download("{repo}"), "rows.jsonl")  # pip install finetune'
        )
    model_class = task.model_class.__name__
    if not adapter:
        return f'from transformers import {model_class}\nmodel = {model_class}.from_pretrained("{repo}")'
    labels = f", num_labels={task.num_labels}" if model_class == "AutoModelForSequenceClassification" else ""
    return (
        f"from transformers import {model_class}; from peft import PeftModel\n"
        f'base = {model_class}.from_pretrained("{recipe.model.name}"{labels})\n'
        f'model = PeftModel.from_pretrained(base, "{repo}")  # the head comes with the adapter'
    )


def merge_run(run_dir: Path, out_dir: Path) -> Path:
    """`finetune merge`: the adapter folded into its base, saved as a full model (dequantised where the base
    was 4/8-bit: the weights the quantised layers computed with), with the tokenizer, recipe and card."""
    if not is_adapter_dir(run_dir):
        raise FinetuneError(f"{run_dir}: no adapter here ({ADAPTER_CONFIG} missing); only LoRA runs are merged")
    check_writable(out_dir, "out_dir", folder=True)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FinetuneError(f"{out_dir}: not empty; merge writes a fresh folder")
    run = load_run(run_dir, dequantize=True, prepare=False)
    merged = run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
    if hasattr(merged, "lm") and hasattr(merged.lm, "merge_and_unload"):  # a decoder's head around the adapter
        merged.lm = merged.lm.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    run.tokenizer.save_pretrained(out_dir)
    recipe = run.recipe.model_copy(update={"peft": None, "quantize": None})
    write_recipe(out_dir, recipe, _base_of(run_dir, recipe))  # the base the adapter was trained on
    for name in (METRICS_FILE, PLOT_FILE):  # the run's results travel with the merged model
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    write_model_card(out_dir, recipe, _metrics_of(run_dir), run.task, merged_from=run_dir)
    log.info("merged %s into %s", run_dir, out_dir)
    return out_dir


def push_run(run_dir: Path, repo: str | None = None, private: bool | None = None, merged: bool | None = None) -> str:
    """`finetune push`: upload the adapter (or, with `merged`, the merged model) with its card to `repo`.

    The token comes from the Hugging Face login or HF_TOKEN and is never written or printed. The folder must
    load (base plus adapter, or the model itself) before anything is uploaded.
    """
    recipe = load_recipe(find_recipe(run_dir))
    hub = recipe.hub
    repo = repo or (hub.repo if hub else None)
    if repo is None:
        raise FinetuneError("--repo: name the Hub repository (user/name), or set hub.repo in the recipe")
    private = private if private is not None else bool(hub and hub.private)
    merged = merged if merged is not None else bool(hub and hub.merged)
    try:
        hub_spec = HubSpec(repo=repo, private=private, merged=merged)
    except ValidationError as exc:
        raise FinetuneError(f"--repo: {exc.errors()[0]['msg'].removeprefix('Value error, hub.repo: ')}") from None
    token = get_token()
    if token is None:
        raise FinetuneError("push: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    with tempfile.TemporaryDirectory() as tmp:
        folder = merge_run(run_dir, Path(tmp) / "merged") if merged else run_dir
        run = _check_loads(folder)
        target = run.recipe.model_copy(update={"hub": hub_spec})
        card = folder / "README.md"
        before = card.read_bytes() if card.is_file() else None
        write_model_card(folder, target, _metrics_of(run_dir), run.task, merged_from=run_dir if merged else None)
        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
        try:
            api.create_repo(repo, private=private, exist_ok=True)
            commit = api.upload_folder(
                folder_path=folder,
                repo_id=repo,
                ignore_patterns=UPLOAD_IGNORE,
                commit_message=f"finetune: {recipe.name} ({_kind(folder, merged)})",
            )
        except Exception as exc:  # huggingface_hub raises HTTP, connection and validation errors alike
            if before is None:  # a failed push leaves the run's card as it was
                card.unlink(missing_ok=True)
            else:
                card.write_bytes(before)
            said = getattr(exc, "server_message", None)  # the Hub's reason (no write access, a bad name)
            reason = f"{first_line(exc)}: {first_line(Exception(said))}" if said else first_line(exc)
            raise FinetuneError(f"push: {redact(reason)}") from None
    log.info("pushed %s to %s", folder.name, repo)
    return commit.commit_url


def _kind(folder: Path, merged: bool) -> str:
    return "merged model" if merged else "adapter" if is_adapter_dir(folder) else "model"


def _check_loads(folder: Path) -> LoadedRun:
    """The folder loaded as `finetune eval` loads it (on the CPU, outside any process group)."""
    try:
        return load_run(folder, prepare=False)
    except FinetuneError as exc:
        raise FinetuneError(*[f"push: refused, the folder does not load: {p}" for p in exc.problems]) from None
    except Exception as exc:  # a broken file surfaces from safetensors, peft or transformers in many types
        raise FinetuneError(f"push: refused, the folder does not load: {first_line(exc)}") from None


def _metrics_of(run_dir: Path) -> dict[str, Any]:
    path = run_dir / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
