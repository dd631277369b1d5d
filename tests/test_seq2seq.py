"""Seq2seq: formatting with the loss on the target only, truncation and skips, generation, text metrics, and whole
runs of tiny T5, BART and decoders built from configs on real JFLEG, Multi30k and DialogSum rows."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
from conftest import MINILM, REPO, SHARED_DATA, recipe_file, run_cli
from datasets import Dataset, DatasetDict
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.errors import FinetuneError
from finetune.lengths import take_length_report
from finetune.losses import IGNORE
from finetune.metrics import compute_metrics
from finetune.recipe import load_recipe, validate_dict
from finetune.tasks import Seq2Seq, build_task
from finetune.tasks.seq2seq import PROMPT_END
from finetune.validate import check

JFLEG = SHARED_DATA / "seq2seq" / "jfleg" / "dev"


def seq2seq_task(family: str, max_target_length: int = 16, **task) -> Seq2Seq:
    spec = validate_dict(
        {
            "model": MINILM,
            "task": {"type": "seq2seq", **task},
            "data": {"files": {"train": "t.jsonl", "validation": "v.jsonl"}},
        }
    ).task
    return build_task(spec, None, family, max_target_length=max_target_length)


def rows_of(features: dict) -> list[dict]:
    return [dict(zip(features, values)) for values in zip(*features.values())]


def jfleg_rows(count: int) -> list[dict]:
    sources = (JFLEG / "dev.src").read_text(encoding="utf-8").splitlines()[:count]
    refs = [(JFLEG / f"dev.ref{i}").read_text(encoding="utf-8").splitlines()[:count] for i in range(4)]
    return [{"sentence": s.strip(), "corrections": [r[n].strip() for r in refs]} for n, s in enumerate(sources)]


def test_decoder_examples_learn_only_the_target(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    task = seq2seq_task("decoder", prompt_template="fix: {sentence} fixed:", label="correction")
    task.prepare_tokenizer(tokenizer)
    features = task.format({"sentence": ["he go home"], "correction": ["he goes home"]}, tokenizer, 64)
    prompt = tokenizer("fix: he go home fixed:", add_special_tokens=False)["input_ids"]
    target = tokenizer("he goes home", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert features["input_ids"] == [prompt + target]
    assert features["labels"] == [[IGNORE] * len(prompt) + target]  # no loss on a single prompt token
    assert features["prompt_length"] == [len(prompt)]
    assert features["skip"] == [""]


def test_decoder_loss_is_the_mean_over_target_tokens(tiny_llama):
    """The task's loss equals the cross-entropy of the target tokens alone, computed independently."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    task = seq2seq_task("decoder", text_a="src", label="tgt")
    task.prepare_tokenizer(tokenizer)
    columns = {"src": ["the cat sat", "a long source sentence here"], "tgt": ["on the mat", "short"]}
    batch = task.collator(tokenizer, None)(rows_of(task.format(columns, tokenizer, 64)))
    with torch.no_grad():
        loss, _ = task.forward(model, batch)
        losses = []
        for source, target in zip(columns["src"], columns["tgt"]):
            prompt = tokenizer(source, add_special_tokens=False)["input_ids"]
            answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            losses += [-logprobs[i, token].item() for i, token in enumerate(answer)]
    assert loss.mean().item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert batch["generation_input_ids"][1].tolist()[-1] == batch["input_ids"][1][batch["labels"][1] == IGNORE][-1]


def test_long_decoder_prompt_keeps_its_start_and_its_cue(tiny_gpt2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    task = seq2seq_task("decoder", max_target_length=4, prompt_template="summarize: {text} summary:", label="s")
    long_text = " ".join(f"word{i}" for i in range(200))
    features = task.format({"text": [long_text], "s": ["a b c d e f"]}, tokenizer, 48)
    full = tokenizer(f"summarize: {long_text} summary:", add_special_tokens=False)["input_ids"]
    ids, labels = features["input_ids"][0], features["labels"][0]
    assert len(ids) == 48
    prompt = ids[: features["prompt_length"][0]]
    assert prompt[:4] == full[:4] and prompt[-PROMPT_END:] == full[-PROMPT_END:]  # start and "summary:" kept
    assert [t for t in labels if t != IGNORE] == tokenizer("a b c d", add_special_tokens=False)["input_ids"]
    assert features["source_length"] == [len(full)] and features["target_length"] == [7]  # six words and the stop


def test_decoder_prompts_are_cut_alike_in_training_evaluation_and_prediction(tiny_gpt2):
    """A prompt must not depend on its target's length: training, evaluation and `finetune predict` leave room for
    the longest target (data.max_target_length), so the model is evaluated on the prompt it was trained on and will
    be asked with."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    task = seq2seq_task("decoder", max_target_length=8, prompt_template="summarize: {text} summary:", label="s")
    long_text = " ".join(f"word{i}" for i in range(200))
    predicted = task.format_inputs({"text": [long_text]}, tokenizer, 48)
    prompt = predicted["input_ids"][0][: predicted["prompt_length"][0]]
    assert len(prompt) == 48 - 8
    for target in ("short", "a much longer reference of many words"):
        for formatted in (task.format_eval, task.format):
            features = formatted({"text": [long_text], "s": [target]}, tokenizer, 48)
            assert features["input_ids"][0][: features["prompt_length"][0]] == prompt


def test_encoder_decoder_examples_follow_t5(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    task = seq2seq_task("encoder-decoder", text_a="en", label="de", prefix="translate English to German:")
    features = task.format({"en": ["a red car"], "de": ["ein rotes auto"]}, tokenizer, 32)
    assert features["input_ids"] == [tokenizer("translate English to German: a red car")["input_ids"]]
    assert features["labels"] == [tokenizer(text_target="ein rotes auto")["input_ids"]]


def test_list_targets_train_on_each_and_judge_against_all(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    task = seq2seq_task("encoder-decoder", max_target_length=64, text_a="sentence", label="corrections")
    rows = jfleg_rows(3)
    columns = {key: [r[key] for r in rows] for key in rows[0]}
    train = task.format(columns, tokenizer, 64)
    assert len(train["input_ids"]) == 12  # four corrections per sentence
    assert train["labels"][1] == tokenizer(text_target=rows[0]["corrections"][1])["input_ids"]
    evaluation = task.format_eval(columns, tokenizer, 64)
    assert len(evaluation["input_ids"]) == 3
    assert evaluation["references"] == [r["corrections"] for r in rows]
    assert evaluation["labels"][0] == tokenizer(text_target=rows[0]["corrections"][0])["input_ids"]


def test_empty_targets_are_counted_and_skipped(tiny_t5):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    task = seq2seq_task("encoder-decoder", text_a="s", label="t")
    columns = {"s": ["one", "two", "three", " "], "t": ["uno", "", "tres", "x"]}
    tokenized = DatasetDict({"train": Dataset.from_dict(task.format(columns, tokenizer, 32))})
    kept, report = take_length_report(tokenized, task, 32)
    assert report["train"]["skipped"] == {"empty target": 1, "empty source": 1}
    assert report["train"]["examples"] == 2 and len(kept["train"]) == 2
    assert "skip" not in kept["train"].column_names

    empty = DatasetDict({"train": Dataset.from_dict(task.format({"s": ["a"], "t": [""]}, tokenizer, 32))})
    with pytest.raises(FinetuneError, match="data.train_split: no examples left after skipping rows"):
        take_length_report(empty, task, 32)


def test_text_metrics_match_the_reference_implementations():
    predictions = ["the cat sat on the mat", "he goes to school", "Ein Hund läuft."]
    references = [["the cat sat on a mat", "a cat"], ["He goes to school.", "he went to school"], ["Ein Hund rennt."]]
    metrics = compute_metrics(["rougeL", "rouge1", "bleu", "chrf", "exact_match"], predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=True)
    for kind in ("rougeL", "rouge1"):
        best = [max(scorer.score(r, p)[kind].fmeasure for r in refs) for p, refs in zip(predictions, references)]
        assert metrics[kind] == pytest.approx(sum(best) / 3)
    streams = [[refs[0] for refs in references], [refs[-1] for refs in references]]  # a lone reference repeated
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)
    # SQuAD's normalisation drops case, punctuation and articles: two of the three match a reference
    assert metrics["exact_match"] == pytest.approx(2 / 3)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


SEQ2SEQ_RECIPE = """
model: {model}
task: {{type: seq2seq, text_a: src, label: tgt, metrics: [exact_match, rougeL]}}
data: {{files: {{train: {train}, validation: {train}}}, max_length: 24, max_target_length: 8}}
generation: {{max_new_tokens: 8}}
train: {{epochs: {epochs}, batch_size: 8, lr: {lr}, warmup: 0, seed: 0, eval_every: 1000, select_best: false}}
output_dir: {out}
"""


@pytest.mark.parametrize(("kind", "epochs", "lr"), [("tiny_t5", 80, 1e-2), ("tiny_gpt2", 80, 1e-2)])
def test_tiny_models_learn_to_write_targets(kind, epochs, lr, request, tmp_path):
    """16 real JFLEG sentences, each mapped to its first word (one of four); a tiny model learns to write it."""
    starts = ("i", "it", "the", "for")
    rows = [{"src": r["sentence"], "tgt": r["sentence"].split()[0]} for r in jfleg_rows(200)]
    rows = [r for r in rows if r["tgt"].lower() in starts][:16]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    model = request.getfixturevalue(kind)
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, SEQ2SEQ_RECIPE.format(model=model, train=train, out=out, epochs=epochs, lr=lr))
    result = run_cli("train", recipe, "train.batch_size=16")  # one step per epoch
    assert result.exit_code == 0
    assert result.metrics["exact_match"] >= 0.9, result.metrics
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["references"] for p in predictions] == [[r["tgt"]] for r in rows]
    hits = [p["prediction"].lower() == p["references"][0].lower() for p in predictions]
    assert sum(hits) / len(hits) == pytest.approx(result.metrics["exact_match"], abs=1 / 16)
    assert (out / "lengths.png").is_file() and json.loads((out / "lengths.json").read_text())["train"]["examples"] == 16

    again = run_cli("eval", out)  # the saved model generates the same texts
    assert again.metrics["exact_match"] == result.metrics["exact_match"]
    inputs = write_jsonl(tmp_path / "inputs.jsonl", [{"src": rows[0]["src"]}])
    from finetune.pipeline import predict

    assert predict(out, inputs)[0]["prediction"] == predictions[0]["prediction"]


def seq2seq_problems(*overrides: str, recipe: str = "recipes/seq2seq/jfleg-smollm2.yaml") -> list[str]:
    try:
        return check(load_recipe(REPO / recipe, list(overrides))).problems
    except FinetuneError as exc:
        return exc.problems


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task.prompt_template='Fix: {sentense}'"], "task.prompt_template ({sentense}): no column 'sentense'"),
        (["task.text_a=sentence"], "task.text_a: seq2seq needs exactly one of task.text_a or task.prompt_template"),
        (["task.labels=[a, b]"], "task.labels: unknown key for task type seq2seq (a text target has no class list)"),
        (["task.metrics=[accuracy]"], "task.metrics: accuracy does not judge generated text"),
        (["task.head=text_to_text"], "task.head: unknown key for task type seq2seq (it generates with the model's own"),
        (["data.max_target_length=192"], "data.max_target_length: a decoder reads prompt and target as one sequence"),
        (["generation.length_penalty=2.0"], "generation.length_penalty: only beam search reads it"),
        (["task.references=[nope]"], "task.references[0]: no column 'nope' in split 'test'"),
    ],
)
def test_bad_seq2seq_settings_are_one_line(overrides, expected):
    found = seq2seq_problems(*overrides)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_generation_settings_on_a_classifier_are_refused():
    found = seq2seq_problems("generation.num_beams=4", recipe="recipes/glue/sst2-minilm.yaml")
    assert found == ["generation: task type classification does not generate text; remove the section"]
    found = seq2seq_problems("task.metrics=[rougeL]", recipe="recipes/glue/sst2-minilm.yaml")
    assert found[0].startswith("task.metrics: rougeL does not judge classes (task type classification)")


def test_empty_targets_are_a_reported_note_and_an_all_empty_split_an_error(tmp_path):
    rows = [{"s": "one", "t": "uno"}, {"s": "two", "t": ""}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "dev.jsonl", [{"s": "x", "t": " "}])
    recipe = recipe_file(
        tmp_path,
        f"model: {MINILM}\ntask: {{type: seq2seq, text_a: s, label: t}}\n"
        f"data: {{files: {{train: {tmp_path / 'train.jsonl'}, validation: {tmp_path / 'dev.jsonl'}}}}}\n",
    )
    report = check(load_recipe(recipe))
    assert report.notes[-1] == "task.label: 1 of 2 rows of split 'train' have an empty source or target; skipped"
    assert report.problems[-1] == (
        "task.label: every row of split 'validation' has an empty source or no reference; nothing to learn or judge"
    )


def test_line_aligned_files_of_different_lengths_are_one_line(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\n", encoding="utf-8")
    split = f"{{en: {tmp_path / 'a.en'}, de: {tmp_path / 'a.de'}}}"
    recipe = recipe_file(
        tmp_path,
        f"model: {MINILM}\ntask: {{type: seq2seq, text_a: en, label: de}}\n"
        f"data: {{files: {{train: {split}, validation: {split}}}}}\n",
    )
    assert run_cli("validate", recipe).exit_code == 2
    assert "data.files.train: line-aligned files differ in length (en 2, de 1 lines)" in capsys.readouterr().err


def test_line_aligned_files_are_read_together_line_by_line(tmp_path):
    """A parallel corpus is read as it is consumed (a row comes before a later line is even decoded), a list column
    takes one item per file, and a list's files of different lengths are an error, not a silent cut."""
    from finetune.recipe.data_section import ReaderSpec
    from finetune.sources import LocalTables, read_rows

    (tmp_path / "a.en").write_bytes(b"one\ntwo\n" + b"x\n" * 50_000 + b"\xff\n")  # not UTF-8, 100 kB on
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    (tmp_path / "r1").write_text("1\n2\n3\n", encoding="utf-8")
    (tmp_path / "r2").write_text("i\nii\n", encoding="utf-8")

    def rows(files: dict) -> object:
        return read_rows(LocalTables({"train": files}, ReaderSpec(), {}, "data"), "train", "lines")

    read = rows({"en": tmp_path / "a.en", "refs": [tmp_path / "a.de", tmp_path / "r1"]})
    assert [next(read), next(read)] == [{"en": "one", "refs": ["eins", "1"]}, {"en": "two", "refs": ["zwei", "2"]}]
    with pytest.raises(FinetuneError, match=r"data.files.train.en: .*a.en is not UTF-8 text"):
        list(read)
    with pytest.raises(FinetuneError, match=r"differ in length \(de 3, refs\[0\] 3, refs\[1\] 2 lines\)"):
        list(rows({"de": tmp_path / "a.de", "refs": [tmp_path / "r1", tmp_path / "r2"]}))


@pytest.mark.parametrize("kind", ["tiny_t5", "tiny_llama"])
def test_lora_adapter_generates_the_same_after_reload(kind, request, tmp_path):
    rows = [{"src": r["sentence"], "tgt": r["corrections"][0]} for r in jfleg_rows(8)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    text = SEQ2SEQ_RECIPE.format(model=request.getfixturevalue(kind), train=train, out=out, epochs=1, lr=1e-3)
    result = run_cli("train", recipe_file(tmp_path, text + "peft: {r: 4}\n"))
    assert result.exit_code == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == ("SEQ_2_SEQ_LM" if kind == "tiny_t5" else "CAUSAL_LM")
    assert run_cli("eval", out).metrics == {k: result.metrics[k] for k in ("exact_match", "rougeL", "eval_loss")}
    first = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert first == json.loads((out / "predictions_validation.jsonl").read_text().splitlines()[0])


def test_inspect_marks_the_masked_prompt(tiny_gpt2, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"src": "he go home", "tgt": "he goes home"}])
    text = SEQ2SEQ_RECIPE.format(model=tiny_gpt2, train=train, out=tmp_path / "run", epochs=1, lr=1e-3)
    assert run_cli("inspect", recipe_file(tmp_path, text), "-n", "1").exit_code == 0
    shown = capsys.readouterr().out
    assert "(3 masked, 4 learned)" in shown and "  target  he goes home" in shown
    assert "  loss  0  0  0    1  1    1    1" in shown


def test_a_truncated_run_reports_tokens_in_kept_dropped_and_trained(tiny_llama, tmp_path):
    """metrics.json counts the training split's tokens, checked against the tokenizer run on the rows directly:
    every dialogue is longer than its room, so each example keeps its prompt's budget and its (capped) target."""
    from cases import BY_NAME, train

    result = train(BY_NAME["seq2seq-decoder"].recipe(tmp_path, tiny_llama))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [json.loads(line) for line in (tmp_path / "dialogsum.jsonl").read_text().splitlines()]
    prompts = [
        len(tokenizer(f"Dialogue: {r['dialogue']}\nSummary:", add_special_tokens=False)["input_ids"]) for r in rows
    ]
    targets = [len(tokenizer(r["summary"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]  # and the stop
    assert all(p + t > 48 for p, t in zip(prompts, targets))
    metrics = result.metrics
    assert metrics["train_tokens_in"] == sum(prompts) + sum(targets)
    kept = sum(48 - 16 + min(t, 16) for t in targets)  # the prompt's budget leaves room for 16 target tokens
    assert metrics["train_tokens_kept"] == kept
    assert metrics["train_tokens_dropped"] == metrics["train_tokens_in"] - kept
    assert metrics["train_tokens_trained"] == sum(min(t, 16) for t in targets)
