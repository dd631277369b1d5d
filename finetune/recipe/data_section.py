"""The recipe's data section: where the examples come from, how local files are read, how rows are reshaped
(`data.transforms`, declared in `finetune.recipe.transforms`) and cut.

Cheap to import like the rest of the schema: `finetune validate` runs on it.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationInfo, model_validator

from finetune.recipe.transforms import SplitSpec, Transform
from finetune.specs.base import Section

EVALUATE_ONLY = "evaluate_only"  # validation context: a recipe read only to score its evaluation split
InstructionFormat = Literal["alpaca", "prompt_completion", "messages", "natural_instructions"]
DataFormat = Literal["auto", "csv", "tsv", "json", "jsonl", "parquet"]


class ReaderSpec(Section):
    """How to read local text tables; the defaults read a plain UTF-8 file with a header row."""

    header: bool = Field(True, description="The first row names the columns.")
    column_names: list[str] | None = Field(None, description="Column names for a file without a header row.")
    delimiter: str | None = Field(None, description="Field separator; default tab for .tsv, comma for .csv.")
    quoting: Literal["minimal", "none"] = Field(
        "minimal", description="none reads quote characters as ordinary text (GLUE's TSV files need it)."
    )
    encoding: str = Field("utf-8", description="Text encoding; utf-8-sig also strips a byte-order mark.")

    @model_validator(mode="after")
    def _reader_options_exist(self) -> ReaderSpec:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f'data.reader.delimiter: one character, got {self.delimiter!r} (a tab is "\\t" in YAML)')
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(
                f"data.reader.encoding: unknown encoding {self.encoding!r} (e.g. utf-8, utf-8-sig, latin-1)"
            ) from None
        return self

    @model_validator(mode="after")
    def _headerless_needs_names(self) -> ReaderSpec:
        if not self.header and not self.column_names:
            raise ValueError("data.reader.column_names: a file without a header row needs its column names")
        return self


class SourceSpec(Section):
    """One source of an instruction mixture: where its rows are, their format, and its share of the mixture."""

    name: str | None = Field(None, description="Name in reports; default the source id or the train file's name.")
    source: str | None = Field(None, description="Hub dataset id; resolved through FINETUNE_DATA_MIRROR when set.")
    subset: str | None = Field(None, description="Hub dataset configuration.")
    files: dict[str, str] | None = Field(
        None,
        description="Local files by split; natural_instructions: {tasks: a folder or a glob of task files, "
        "test_tasks: the file listing the held-out tasks}.",
    )
    split: str = Field(
        "train",
        description="The split read; natural_instructions: train or test (by its task list), or all (every task "
        "file, no list needed).",
    )
    format: InstructionFormat = Field(
        description="alpaca (instruction, input, output), prompt_completion (prompt, completion), messages "
        "(OpenAI messages or ShareGPT conversations; the loss on every assistant turn), natural_instructions "
        "(Super-NaturalInstructions task files: Definition, Positive Examples, Instances)."
    )
    columns: dict[str, str] | None = Field(
        None, description="The format's fields under other names, e.g. {completion: answer} for Dolly."
    )
    max_examples: PositiveInt | None = Field(
        None,
        description="Cap on the examples taken (a seeded draw); natural_instructions: per task (Flan's "
        "examples-proportional mixing with a cap).",
    )
    weight: PositiveFloat = Field(1.0, description="Share multiplier after the cap: 2 repeats the examples twice.")
    tasks: list[str] | None = Field(None, description="natural_instructions: only these task names.")
    held_out: NonNegativeInt = Field(
        0,
        description="Rows kept out of training (a seeded draw) to evaluate on, when data.eval_mixture is absent.",
    )

    @model_validator(mode="after")
    def _one_location(self) -> SourceSpec:
        if (self.source is None) == (self.files is None):
            raise ValueError("data.mixture: each source needs exactly one of source (Hub id) or files")
        return self

    @property
    def label(self) -> str:
        return self.name or self.source or Path(next(iter(self.files.values()))).stem


class DataSpec(Section):
    """Where the examples come from and how they are cut."""

    source: str | None = Field(
        None, description="Hub dataset id, e.g. nyu-mll/glue; resolved through FINETUNE_DATA_MIRROR when set."
    )
    subset: str | None = Field(None, description="Hub dataset configuration, e.g. sst2.")
    files: dict[str, str | list[str] | dict[str, str | list[str]]] | None = Field(
        None,
        description="Local files by split name, e.g. {train: data/train.csv, validation: data/dev.csv}; a glob "
        "(data/train-*.jsonl) or a list of files reads them in order as one split, and a JSON file may hold one "
        "record or a list of them; a split of line-aligned text files names one per column, {de: val.de.gz, en: "
        "val.en.gz} (a list of files makes a column of lists, e.g. several references).",
    )
    format: DataFormat = Field("auto", description="File format; auto reads it from the file extension.")
    reader: ReaderSpec = Field(default_factory=ReaderSpec, description="Options for csv and tsv files.")
    transforms: list[Transform] = Field(
        [],
        description="Reshaping applied to every split after reading, in order: rename, select, drop, join, map, "
        "answer, split_text, explode, filter, cast (one table each below; README: Datasets as they come).",
    )
    split: SplitSpec | None = Field(
        None,
        description="Draw the training and evaluation parts from one labelled split (after the transforms), e.g. "
        "{from: validation, eval_share: 0.2}; data.train_split and data.eval_split then name its two parts.",
    )
    train_split: str = Field("train", description="Split used for training.")
    eval_split: str = Field("validation", description="Split evaluated during and after training.")
    max_train_samples: PositiveInt | None = Field(
        None, description="Keep this many training examples (after a seeded shuffle), for quick runs."
    )
    max_eval_samples: PositiveInt | None = Field(None, description="Keep the first N evaluation examples.")
    streaming: bool = Field(
        False,
        description="Read the training split as training consumes it (Hub or local files), tokenized on the fly "
        "through a seeded shuffle buffer, for corpora larger than memory; needs train.max_steps, and task.labels for "
        "classes. max_train_samples then takes the stream's first N rows.",
    )
    shuffle_buffer: PositiveInt = Field(
        10_000,
        description="data.streaming: raw rows held to shuffle the stream (more shuffle better and hold more memory).",
    )
    max_length: PositiveInt = Field(
        128, description="Truncate tokenized inputs to this many tokens (a decoder's prompt and target together)."
    )
    max_target_length: PositiveInt = Field(
        128, description="seq2seq: truncate targets to this many tokens (the end of a long target is cut)."
    )
    mixture: list[SourceSpec] | None = Field(
        None, description="instruction: the training sources, each with its format and share of the mixture."
    )
    eval_mixture: list[SourceSpec] | None = Field(
        None,
        description="instruction: the evaluation sources (held-out tasks, judged zero-shot per task); default "
        "data.eval_split of each training source.",
    )
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="Decoders: each batch's examples packed in order into rows no wider than its longest example, "
        "positions restarting per example so that none attends to another (padding only at a row's end). auto packs "
        "seq2seq, instruction and causal language-modelling examples "
        "and instruction examples on the architectures proven to keep them apart (the run's recipe.yaml says which).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.mixture is not None:
            if self.source is not None or self.files is not None:
                raise ValueError("data.mixture: names the sources itself; remove data.source and data.files")
            if self.transforms or self.split is not None or self.streaming:
                key = "transforms" if self.transforms else "split" if self.split is not None else "streaming"
                raise ValueError(f"data.{key}: applies to data.source or data.files, not to a mixture's sources")
            return self
        if self.eval_mixture is not None:
            raise ValueError("data.eval_mixture: evaluates an instruction mixture; add data.mixture")
        if (self.source is None) == (self.files is None):
            raise ValueError("data: give exactly one of data.source (Hub id) or data.files (local files)")
        if self.files is not None and self.subset is not None:
            raise ValueError("data.subset: only applies to a Hub dataset (data.source)")
        if self.streaming and self.split is not None:
            raise ValueError("data.split: draws its parts from a whole split, which data.streaming never holds")
        return self

    @model_validator(mode="after")
    def _splits_present(self, info: ValidationInfo) -> DataSpec:
        if self.files is not None:
            # scoring without training (`finetune eval --zero-shot`) reads no training split
            keys = ("eval_split",) if (info.context or {}).get(EVALUATE_ONLY) else ("train_split", "eval_split")
            if self.split is not None:
                if self.split.source not in self.files:
                    raise ValueError(
                        f"data.split.from: split {self.split.source!r} is not in data.files ({', '.join(self.files)})"
                    )
                keys = ()
            for key in keys:
                split = getattr(self, key)
                if split not in self.files:
                    raise ValueError(f"data.{key}: split {split!r} is not in data.files ({', '.join(self.files)})")
        return self
