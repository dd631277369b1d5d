"""Instruction tuning: every data format read natively, the loss on the responses only (plain layout and the
real SmolLM2 chat template, several turns), templates and k-shot, Flan-style mixing, held-out tasks judged per
task, packing without cross-contamination, and bad input as one line or a counted skip."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import REPO, SHARED_DATA, SMOLLM2, run_cli
from transformers import AutoTokenizer

from finetune.errors import FinetuneError
from finetune.instructions import NI_TEMPLATES, load_mixture, mix, read_source
from finetune.losses import IGNORE
from finetune.recipe import load_recipe, validate_dict
from finetune.recipe.data_section import SourceSpec
from finetune.tasks import Instruction, build_task

NI_TASKS = SHARED_DATA / "instruct" / "natural_instructions"
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
    {"role": "user", "content": "And a third?"},
    {"role": "assistant", "content": "Red."},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_converted):
    """The real SmolLM2-135M-Instruct tokenizer, with its ChatML chat template."""
    return AutoTokenizer.from_pretrained(smollm2_converted[1])


def instruction_task(family: str = "decoder", **task) -> Instruction:
    spec = validate_dict(
        {
            "model": SMOLLM2,
            "task": {"type": "instruction", **task},
            "data": {"mixture": [{"source": "tatsu-lab/alpaca", "format": "alpaca", "held_out": 2}]},
        }
    ).task
    return build_task(spec, None, family, max_target_length=64)


def learned_runs(ids: list[int], labels: list[int], tokenizer) -> list[str]:
    """The text of each run of consecutive learned tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def test_chat_template_learns_every_assistant_turn_and_nothing_else(smollm2_tokenizer):
    task = instruction_task()
    encoded = task.encode_conversation(CONVERSATION, smollm2_tokenizer, 512, evaluation=False)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert learned_runs(encoded["input_ids"], encoded["labels"], smollm2_tokenizer) == [
        f"{r}<|im_end|>\n" for r in replies
    ]
    assert smollm2_tokenizer.decode(encoded["input_ids"]) == smollm2_tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    # evaluation judges the last reply, generated from the template's own generation prompt
    judged = task.encode_conversation(CONVERSATION, smollm2_tokenizer, 512, evaluation=True)
    assert learned_runs(judged["input_ids"], judged["labels"], smollm2_tokenizer) == ["Red.<|im_end|>\n"]
    prompt = smollm2_tokenizer.decode(judged["input_ids"][: judged["prompt_length"]])
    assert prompt == smollm2_tokenizer.apply_chat_template(
        CONVERSATION[:-1], add_generation_prompt=True, tokenize=False
    )


def sources(tmp_path) -> dict[str, SourceSpec]:
    """One small source per format: real rows from the shared data, and an OpenAI-style messages file."""
    openai = tmp_path / "openai.jsonl"
    openai.write_text(json.dumps({"messages": CONVERSATION[1:5]}) + "\n", encoding="utf-8")
    t0 = tmp_path / "t0.jsonl"
    lines = (SHARED_DATA / "instruct/t0_prompted/ag_news_classify.jsonl").read_text(encoding="utf-8").splitlines()
    t0.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    return {
        "alpaca": SourceSpec(source="tatsu-lab/alpaca", format="alpaca", max_examples=4),
        "prompt_completion": SourceSpec(files={"train": str(t0)}, format="prompt_completion"),
        "dolly": SourceSpec(
            files={"train": str(SHARED_DATA / "instruct/dolly/dolly_151.jsonl")},
            format="prompt_completion",
            columns={"completion": "answer"},
            max_examples=4,
        ),
        "sharegpt": SourceSpec(
            source="lm-sys/FastChat", subset="dummy_conversation", format="messages", max_examples=4
        ),
        "openai": SourceSpec(files={"train": str(openai)}, format="messages"),
        "natural_instructions": SourceSpec(
            source="allenai/natural-instructions",
            format="natural_instructions",
            tasks=["task843_financial_phrasebank_classification"],
            max_examples=4,
        ),
    }


@pytest.mark.parametrize("name", ["alpaca", "prompt_completion", "dolly", "sharegpt", "openai", "natural_instructions"])
@pytest.mark.parametrize("chat", [True, False])
def test_every_format_learns_only_its_responses(name, chat, tmp_path, smollm2_tokenizer):
    spec = sources(tmp_path)[name]
    examples, _, _ = read_source(spec, "train", None, 1, seed=0)
    examples = mix(examples, spec, 0)
    assert examples
    task = instruction_task(chat_template=chat)
    eos = smollm2_tokenizer.eos_token
    for example in examples:
        messages = example["messages"]
        encoded = task.encode_conversation(messages, smollm2_tokenizer, 4096, evaluation=False)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        end = "<|im_end|>" if chat else eos
        learned = learned_runs(encoded["input_ids"], encoded["labels"], smollm2_tokenizer)
        assert [run.strip() for run in learned] == [(r + end).strip() for r in replies]
        assert not any(m["content"].strip() == "" for m in messages if m["role"] == "assistant")
    if name == "prompt_completion":
        assert not any(e["references"][0].endswith("<|endoftext|>") for e in examples)  # T0's marker is dropped


def test_natural_instructions_prompts_hold_definition_examples_and_input():
    spec = SourceSpec(
        source="allenai/natural-instructions",
        format="natural_instructions",
        tasks=["task1344_glue_entailment_classification"],
    )
    task = json.loads((NI_TASKS / "tasks/task1344_glue_entailment_classification.json").read_text(encoding="utf-8"))
    examples, _, _ = read_source(spec, "test", [NI_TEMPLATES[0]], 2, seed=0)
    assert len(examples) == len(task["Instances"])
    first, instance = examples[0], task["Instances"][0]
    positive = task["Positive Examples"]
    assert first["messages"][0]["content"] == (
        f"Definition: {task['Definition'][0]}\n\nPositive Example 1 -\nInput: {positive[0]['input']}\n"
        f"Output: {positive[0]['output']}\n\nPositive Example 2 -\nInput: {positive[1]['input']}\n"
        f"Output: {positive[1]['output']}\n\nNow complete the following example -\nInput: {instance['input']}\nOutput:"
    )
    assert first["references"] == instance["output"] and first["task"] == "task1344_glue_entailment_classification"


def test_templates_are_drawn_per_example_with_a_seed():
    spec = SourceSpec(source="tatsu-lab/alpaca", format="alpaca", max_examples=50)
    templates = ["A: {instruction} {input}", "B: {instruction} {input}", "C: {instruction} {input}"]
    first, _, _ = read_source(spec, "train", templates, 0, seed=3)
    again, _, _ = read_source(spec, "train", templates, 0, seed=3)
    other, _, _ = read_source(spec, "train", templates, 0, seed=4)
    heads = [e["messages"][0]["content"][0] for e in first]
    assert heads == [e["messages"][0]["content"][0] for e in again]
    assert heads != [e["messages"][0]["content"][0] for e in other]
    assert set(heads) == {"A", "B", "C"}


def test_k_shot_exemplars_are_training_rows_only(tmp_path):
    path = tmp_path / "alpaca.json"
    rows = [{"instruction": f"Task {i}.", "input": "", "output": f"<answer-{i:02d}>"} for i in range(30)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    recipe = validate_dict(
        {
            "model": SMOLLM2,
            "task": {"type": "instruction", "shots": 3},
            "data": {"mixture": [{"files": {"train": str(path)}, "format": "alpaca", "held_out": 10}]},
        }
    )
    examples, _ = load_mixture(recipe)
    held = {e["references"][0] for e in examples["eval"]}
    trained = {e["references"][0] for e in examples["train"]}
    assert len(held) == 10 and len(trained) == 20

    def shown(example: dict) -> set[str]:
        return {r["output"] for r in rows if r["output"] in example["messages"][0]["content"]}

    assert all(len(shown(e)) == 3 and shown(e) <= trained - set(e["references"]) for e in examples["train"])
    assert all(len(shown(e)) == 3 and shown(e) <= trained for e in examples["eval"])
    assert load_mixture(recipe)[0] == examples  # the same seed draws the same exemplars


def test_held_out_tasks_are_the_official_test_list_and_mixing_caps_each_task():
    recipe = load_recipe(REPO / "recipes/instruct/natural-instructions-smollm2.yaml")
    examples, report = load_mixture(recipe)
    test_list = set((NI_TASKS / "splits/default/test_tasks.txt").read_text(encoding="utf-8").split())
    train_tasks = {e["task"] for e in examples["train"]}
    eval_tasks = {e["task"] for e in examples["eval"]}
    assert (
        eval_tasks
        == {
            "task1344_glue_entailment_classification",
            "task1393_superglue_copa_text_completion",
            "task648_answer_generation",
            "task957_e2e_nlg_text_generation_generate",
            "task1728_web_nlg_data_to_text",
        }
        and eval_tasks <= test_list
    )
    assert not train_tasks & test_list and len(train_tasks) == 36
    counts = report["train"]["allenai/natural-instructions"]["tasks"]
    assert set(counts.values()) == {64}  # every training task has more than the cap
    assert all(n == 40 for n in report["eval"]["allenai/natural-instructions"]["tasks"].values())

    weighted = mix(examples["train"][:10], SourceSpec(source="x", format="alpaca", weight=2.5), seed=0)
    assert len(weighted) == 25


def test_responses_past_the_limit_are_skipped_and_counted(smollm2_tokenizer):
    task = instruction_task()
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "Short answer."}]
    assert task.encode_conversation(long, smollm2_tokenizer, 64, evaluation=False)["skip"] == (
        "nothing to learn within data.max_length"
    )
    assert task.encode_conversation(long, smollm2_tokenizer, 64, evaluation=True)["skip"] == (
        "prompt longer than data.max_length"
    )
    fits = task.encode_conversation(long, smollm2_tokenizer, 1024, evaluation=False)
    assert fits["skip"] == "" and not fits["target_cut"]


def test_conversations_without_an_answer_are_counted(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [
        {"conversations": [{"from": "human", "value": "hi"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "narrator", "value": "once"}, {"from": "gpt", "value": "upon"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, _, skipped = read_source(SourceSpec(files={"train": str(path)}, format="messages"), "train", None, 0, 0)
    assert len(examples) == 1
    assert dict(skipped) == {"no assistant turn": 1, "empty response": 1, "unknown role": 1}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["task.templates=['{instruction} {context}']"],
            "task.templates: the template names 'context', which the rows lack (instruction, input, output)",
        ),
        (
            ["data.mixture=[{source: allenai/natural-instructions, format: natural_instructions, tasks: [task1]}]"],
            "data.mixture (allenai/natural-instructions): no train task file for task1",
        ),
        (
            ["data.mixture=[{source: tatsu-lab/alpaca, format: messages, held_out: 5}]"],
            "data.mixture (tatsu-lab/alpaca): the messages format reads messages; the rows have instruction",
        ),
        (["data.mixture=[{source: tatsu-lab/alpaca, format: alpaca}]"], "data.eval_mixture: name the evaluation"),
        (["task.text_a=instruction"], "task.text_a: unknown key for task type instruction (its fields come from"),
    ],
)
def test_bad_instruction_settings_are_one_line(overrides, expected):
    from finetune.validate import check

    try:
        found = check(load_recipe(REPO / "recipes/instruct/alpaca-smollm2-lora.yaml", overrides)).problems
    except FinetuneError as exc:
        found = exc.problems
    assert len(found) == 1 and found[0].startswith(expected), found


def test_held_out_tasks_are_reported_task_by_task(tiny_llama, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train",
        REPO / "recipes/instruct/natural-instructions-smollm2.yaml",
        f"model={tiny_llama}",
        "data.max_length=256",
        "data.mixture=[{source: allenai/natural-instructions, format: natural_instructions, max_examples: 2}]",
        "data.eval_mixture=[{source: allenai/natural-instructions, format: natural_instructions, split: test, "
        "max_examples: 3}]",
        "task.shots=0",
        "generation.max_new_tokens=4",
        "train.max_steps=2",
        f"output_dir={out}",
    )
    assert result.exit_code == 0
    table = json.loads((out / "predictions.tasks.json").read_text())
    assert len(table) == 5 and all(row["examples"] == 3 for row in table.values())
    mean = sum(row["rougeL"] for row in table.values()) / 5
    assert f"| mean over 5 tasks | 15 | {mean:.4f} |" in (out / "predictions.tasks.md").read_text()
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["train"]["allenai/natural-instructions"]["examples_used"] == 72  # 36 tasks x 2
    lengths = json.loads((out / "lengths.json").read_text())
    assert lengths["eval"]["examples"] == 15 and (out / "lengths.png").is_file()


def test_zero_shot_generation_and_predict(tiny_llama, tmp_path):
    recipe = REPO / "recipes/instruct/alpaca-smollm2-lora.yaml"
    short = [f"model={tiny_llama}", "data.max_length=256", "data.max_eval_samples=4", "generation.max_new_tokens=3"]
    predictions = tmp_path / "zero.jsonl"
    options = ["--predictions", predictions, "--output", tmp_path / "zero-shot", *[f"--set={o}" for o in short]]
    result = run_cli("eval", recipe, "--zero-shot", *options)
    assert result.exit_code == 0 and result.metrics["num_examples"] == 4 and 0 <= result.metrics["rougeL"] <= 1
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 4 and all(r["task"] == "tatsu-lab/alpaca" for r in records)

    out = tmp_path / "run"
    assert (
        run_cli("train", recipe, *short, "train.max_steps=1", "data.max_train_samples=8", f"output_dir={out}").exit_code
        == 0
    )
    from finetune.pipeline import predict

    prompts, chats = tmp_path / "prompts.jsonl", tmp_path / "chats.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a colour."}) + "\n", encoding="utf-8")
    chats.write_text(json.dumps({"messages": CONVERSATION[:4]}) + "\n", encoding="utf-8")
    for path in (prompts, chats):
        [record] = predict(out, path)
        assert isinstance(record["prediction"], str)


def test_natural_instructions_folder_read_whole_without_a_task_list(tmp_path):
    """A folder of task files, no held-out list: split all evaluates every task in it; split test asks for the
    list in one line."""
    names = ["task1344_glue_entailment_classification", "task1393_superglue_copa_text_completion"]
    for name in names:
        (tmp_path / f"{name}.json").symlink_to(NI_TASKS / "tasks" / f"{name}.json")
    spec = SourceSpec(files={"tasks": str(tmp_path)}, format="natural_instructions", split="all", max_examples=3)
    examples, _, _ = read_source(spec, "all", None, 0, seed=0)
    counts = Counter(e["task"] for e in examples)
    expected = {n: len(json.loads((tmp_path / f"{n}.json").read_text())["Instances"]) for n in names}
    assert counts == expected
    with pytest.raises(FinetuneError, match="split test needs files.test_tasks"):
        read_source(spec, "test", None, 0, seed=0)
    held_out = tmp_path / "test_tasks.txt"
    held_out.write_text(names[0] + "\n")
    listed = spec.model_copy(update={"files": {"tasks": str(tmp_path), "test_tasks": str(held_out)}})
    assert Counter(e["task"] for e in read_source(listed, "all", None, 0, seed=0)[0]) == expected  # the list aside
    assert {e["task"] for e in read_source(listed, "train", None, 0, seed=0)[0]} == {names[1]}
