"""`finetune validate`: is this recipe runnable? Checks the data and the model config without loading weights.

Torch-free: every check reads files directly (headers, label columns, config.json), so a local
recipe validates in about a second.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

from finetune.errors import STREAM_LABELS, FinetuneError
from finetune.families import PACKING_ISOLATED, detect_family, read_config
from finetune.fields import field_or_none, get_field
from finetune.instructions import load_mixture
from finetune.labels import infer_labels
from finetune.mirrors import DATA_MIRROR_ENV, PACKAGED_MODELS, ResolvedModel, resolve_model
from finetune.recipe.schema import Recipe
from finetune.sources import HubDataset, LocalTables, read_rows, resolve_source
from finetune.tracking import missing_trackers
from finetune.transforms import plan, split_parts, transform_rows

STREAM_CHECK_ROWS = 1000
QUANT_BLOCK = 64  # bitsandbytes quantises 4-bit weights in blocks of 64
WIDTH_KEYS = (
    "hidden_size",
    "intermediate_size",
    "embedding_size",
    "d_model",
    "d_ff",
    "n_embd",
    "n_inner",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
)
# the depth of each stack of transformer blocks: decoders and encoders, then T5's and BART's encoder and decoder
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers")


@dataclass
class Report:
    """What validation found: problems stop a run, notes are said and ignored."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    family: str | None = None
    model_type: str | None = None
    labels: list[str] | None = None
    model: ResolvedModel | None = None

    @property
    def architecture_known(self) -> bool:
        """Family (and, but for an encoder, model type) known without loading the checkpoint's config."""
        return self.family is not None and (self.family == "encoder" or self.model_type is not None)

    def raise_for_problems(self) -> None:
        if self.problems:
            raise FinetuneError(*self.problems)


def check(recipe: Recipe, training: bool = True) -> Report:
    """Run every check on a schema-valid recipe and collect all problems; without `training` (zero-shot scoring)
    only the evaluation split is read."""
    report = Report()
    for step in (_check_model, partial(_check_data, training=training), _check_hub):
        try:
            step(recipe, report)
        except FinetuneError as exc:
            report.problems.extend(exc.problems)
    if training:
        report.problems.extend(missing_trackers(recipe.train.report_to))
    return report


def _check_model(recipe: Recipe, report: Report) -> None:
    spec = recipe.model
    report.problems.extend(recipe.task.path_problems())
    resolved = report.model = resolve_model(spec.name)
    if resolved.origin == "path" and not Path(resolved.location).is_dir():
        raise FinetuneError(f"model.name: no such folder: {spec.name}")
    if spec.trust_remote_code:
        report.notes.append(
            f"model.trust_remote_code: the modelling code in {spec.name}'s repository runs on this machine; "
            "set it only for an author you trust"
        )
    if resolved.is_local and spec.init == "pretrained" and not spec.allow_pickle:
        folder = Path(resolved.location)
        if not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
            report.problems.append(
                f"model.name: {spec.name} holds its weights only as pickle (*.bin), which can run code when "
                "loaded; convert them to safetensors, or set model.allow_pickle: true if you trust their source"
            )
    if resolved.origin == "gguf":
        report.notes.append(f"model.name: {spec.name} is {resolved.about}; it becomes a plain checkpoint on first load")
        report.family = PACKAGED_MODELS[spec.name].family if spec.family == "auto" else spec.family
        if importlib.util.find_spec("gguf") is None:
            report.problems.append(
                f"model.name: {spec.name} is a GGUF file; reading it needs the gguf package (pip install gguf)"
            )
    else:
        config_dir = resolved.location if resolved.is_local else _hub_config(spec.name, spec.revision)
        if config_dir is None:
            report.notes.append(f"model.name: {spec.name} is not stored locally; its config is checked when it loads")
            report.family = None if spec.family == "auto" else spec.family
        else:
            _check_config(recipe, report, read_config(config_dir))
    data, task = recipe.data, recipe.task
    if report.family is not None:
        report.problems.extend(task.family_problems(report.family, spec.name, data.max_length, data.max_target_length))
    if data.packing is True and report.family not in (None, "decoder"):
        report.problems.append(
            f"data.packing: packs a decoder's sequences; {spec.name} is an {report.family}, whose batches are padded"
        )
    _check_head(recipe, report)
    supported = task.families
    if report.family is not None and report.family not in supported:
        raise FinetuneError(
            f"model.family: task type {recipe.task.type} runs on {', '.join(sorted(supported))} checkpoints; "
            f"{spec.name} is {report.family}"
        )


def _check_config(recipe: Recipe, report: Report, config: dict) -> None:
    """The checks on the checkpoint's config.json: family, positions, quantisable widths, depth of each stack."""
    spec = recipe.model
    report.family = detect_family(config) if spec.family == "auto" else spec.family
    report.model_type = config.get("model_type")
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if positions and recipe.data.max_length > positions:
        report.problems.append(f"data.max_length: {recipe.data.max_length} exceeds the model's {positions} positions")
    report.problems.extend(quantization_problems(recipe, config))
    depths = [(config[key], key) for key in DEPTH_KEYS if isinstance(config.get(key), int)]
    if spec.pretrained_layers is not None and depths and spec.pretrained_layers > min(depths)[0]:
        depth, key = min(depths)
        report.problems.append(
            f"model.pretrained_layers: {spec.pretrained_layers} is more than the model's {depth} blocks ({key})"
        )


def quantization_problems(recipe: Recipe, config: dict) -> list[str]:
    """Can bitsandbytes quantise this architecture? Its 4-bit layers need every width divisible by 64."""
    if recipe.quantize is None:
        return []
    if importlib.util.find_spec("bitsandbytes") is None:
        return ["quantize: needs the bitsandbytes package (pip install bitsandbytes)"]
    if recipe.quantize.bits == 4:
        for key in WIDTH_KEYS:
            width = config.get(key)
            if isinstance(width, int) and width % QUANT_BLOCK:
                return [
                    f"quantize.bits: 4-bit layers need widths divisible by {QUANT_BLOCK}; {recipe.model.name} has "
                    f"{key} {width}; use quantize.bits: 8, or no quantize section"
                ]
    return []


def _check_hub(recipe: Recipe, report: Report) -> None:
    if recipe.hub is not None and recipe.hub.push:
        from huggingface_hub import get_token

        if get_token() is None:
            report.problems.append(
                "hub.push: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN (or push later with "
                "`finetune push`)"
            )


def _check_head(recipe: Recipe, report: Report) -> None:
    if report.architecture_known:
        report.problems.extend(architecture_problems(recipe, report.family, report.model_type))
    # otherwise checked once the checkpoint's config loads


def architecture_problems(recipe: Recipe, family: str, model_type: str | None) -> list[str]:
    """Packing needs an architecture that keeps packed examples apart; then what the task's head needs."""
    if recipe.data.packing is True and family == "decoder" and model_type not in PACKING_ISOLATED:
        return [
            f"data.packing: {model_type} ignores restarting positions, so packed examples would attend to each "
            "other; set data.packing: false"
        ]
    return recipe.task.head_problems(family, model_type, recipe.model.name)


def _hub_config(repo_id: str, revision: str | None) -> str | None:
    """The folder of a Hub checkpoint's config.json: from the local Hugging Face cache, else fetched (a few KB,
    before any weights); None when the Hub cannot be reached."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        raise FinetuneError(f"model.name: {repo_id!r} is neither an existing folder nor a Hub id") from None
    if isinstance(found, str):
        return str(Path(found).parent)
    endpoint = os.environ.get("HF_ENDPOINT")
    try:  # one try first: unreachable, the download would retry for half a minute
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision, endpoint=endpoint))
        found = hf_hub_download(repo_id, "config.json", revision=revision, endpoint=endpoint)
    except RepositoryNotFoundError:  # gated and private repositories without access included
        raise FinetuneError(f"model.name: no model {repo_id} on the Hub that this login can read") from None
    except RevisionNotFoundError:
        raise FinetuneError(f"model.revision: {revision} is not a revision of {repo_id}") from None
    except RemoteEntryNotFoundError:
        raise FinetuneError(f"model.name: {repo_id} has no config.json on the Hub") from None
    except (OSError, httpx2.TransportError):  # offline, or the Hub unreachable: the load checks it
        return None
    return str(Path(found).parent)


def _check_data(recipe: Recipe, report: Report, training: bool) -> None:
    task = recipe.task
    if task.reads_mixture:
        _check_mixture(recipe, report)
        return
    source = resolve_source(recipe.data)
    if isinstance(source, HubDataset):
        report.notes.append(
            f"data.source: {source.path} has no local copy (set {DATA_MIRROR_ENV} to use one); "
            "its columns are checked when it loads"
        )
        return
    splits = {"train_split": recipe.data.train_split} if training else {}
    splits["eval_split"] = recipe.data.eval_split
    first = next(iter(splits.values()))  # the split whose labels name the classes
    by_role = {key.removesuffix("_split"): split for key, split in splits.items()}
    for key, (split, _) in plan(recipe.data, by_role).items():
        if split not in source.files:
            raise FinetuneError(f"data.{key}_split: no split {split!r} (splits: {', '.join(source.files)})")

    streamed = recipe.data.streaming and training  # the training split is checked on its first rows
    if streamed:
        report.notes.append(f"data.streaming: the training split is checked on its first {STREAM_CHECK_ROWS} rows")
        if task.has_classes and not task.labels:
            raise FinetuneError(STREAM_LABELS.format(path=task.label))

    def read(key: str, split: str) -> list[dict]:
        rows = read_rows(source, split, source.format_of(split, recipe.data.format))
        found = list(islice(rows, STREAM_CHECK_ROWS) if streamed and key == "train" else rows)
        if not found:
            raise FinetuneError(f"data.{key}_split: split {split!r} is empty ({source.named(split)})")
        return transform_rows(recipe.data.transforms, split, found)

    rows = {by_role[key]: part for key, part in split_parts(recipe.data, by_role, read, _take).items()}
    for key, split in splits.items():
        _check_columns(recipe, split, key.removesuffix("_split"), rows[split][0], source)
    if task.has_classes:
        _check_label_kinds(task.label, first, rows[first])
        report.labels = list(task.labels or infer_labels(field_or_none(r, task.label) for r in rows[first]))
        if len(report.labels) < 2:
            unlabelled, _ = task.check_rows(first, "train", rows[first], report.labels)
            raise FinetuneError(
                *unlabelled[:1],
                f"task.label: the {first} split has {len(report.labels)} class; a classifier needs two or more",
            )
        problem = task.classes_problem(report.labels)
        if problem:
            report.problems.append(problem)
    for key, split in splits.items():
        problems, notes = task.check_rows(split, key.removesuffix("_split"), rows[split], report.labels)
        report.problems.extend(null_texts(task.fields("input"), split, rows[split]) + problems)
        report.notes.extend(notes)


def _take(rows: list[dict], numbers: list[int]) -> list[dict]:
    return [rows[i] for i in numbers]


def null_texts(fields: dict[str, str], split: str, rows: list[dict]) -> list[str]:
    """A problem for each input field that is null or missing in some row (it would read as the text "None"), or
    holds a number, a list or a record where text belongs (a JSON file's column named by mistake; candidates
    columns hold lists, and are read by the task)."""
    problems = []
    for key, path in fields.items():
        values = [field_or_none(row, path) for row in rows]
        kinds = not key.startswith("task.choices")
        for what, found in (
            ("is null or missing", [n for n, v in enumerate(values) if v is None]),
            ("holds a number, list or record, not text,", [n for n, v in enumerate(values) if kinds and _not_text(v)]),
        ):
            if found:
                more = f" and {len(found) - 3} more" if len(found) > 3 else ""
                rows_named = ", ".join(map(str, found[:3]))
                problems.append(f"{key}: {path} {what} in row(s) {rows_named}{more} of split {split!r}")
    return problems


def _not_text(value: object) -> bool:
    return isinstance(value, int | float | list | dict) and not isinstance(value, bool)


def _check_label_kinds(column: str, split: str, rows: list[dict]) -> None:
    """Class labels written two ways (numbers in some rows, names in others) name no single class set."""
    first: dict[bool, tuple[int, object]] = {}
    for number, row in enumerate(rows):
        value = field_or_none(row, column)
        if value is not None and not isinstance(value, bool):
            first.setdefault(isinstance(value, str), (number, value))
    if len(first) == 2:
        (n, number), (m, name) = first[False], first[True]
        raise FinetuneError(
            f"task.label: {column} holds numbers (row {n}: {number!r}) and names (row {m}: {name!r}) in split "
            f"{split!r}; write every label one way"
        )


def _check_mixture(recipe: Recipe, report: Report) -> None:
    """Every source reads in its format; say what each gives and skips."""
    _, mixture = load_mixture(recipe)
    for role, sources in mixture.items():
        for name, found in sources.items():
            skipped = ", ".join(f"{n} {why}" for why, n in found["skipped"].items())
            report.notes.append(
                f"data.{'mixture' if role == 'train' else 'eval_mixture'} ({name}): {found['examples_used']} of "
                f"{found['examples_available']} examples" + (f"; skipped {skipped}" if skipped else "")
            )


def _check_columns(recipe: Recipe, split: str, role: str, first_row: dict, source: LocalTables) -> None:
    missing = []
    for key, path in recipe.task.fields(role).items():
        try:
            get_field(first_row, path)
        except KeyError:
            missing.append(f"{key}: no column {path!r} in split {split!r}")
    if missing:
        present = ", ".join(first_row)
        raise FinetuneError(*[f"{line} (columns: {present}; read from {source.origin})" for line in missing])
