"""Packing keeps examples apart on every decoder architecture the project lists, or is refused for it: packed
logits and loss equal each example run alone (padded), for each of families.DECODER_TYPES."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from finetune.families import DECODER_TYPES, PACKING_ISOLATED
from finetune.losses import token_loss
from finetune.prepare import settle_architecture
from finetune.recipe import validate_dict
from finetune.tasks import build_task
from finetune.tasks.seq2seq import GenerationCollator, PackingCollator
from finetune.validate import Report, architecture_problems

SIZES = {  # every architecture's own names for the sizes; each config takes those it has
    "vocab_size": 64,
    "hidden_size": 32,
    "n_embd": 32,
    "d_model": 32,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "num_attention_heads": 2,
    "n_head": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 64,
    "n_inner": 64,
    "ffn_dim": 64,
    "word_embed_proj_dim": 32,
    "rotary_dim": 8,
    "num_local_experts": 2,
    "num_experts_per_tok": 1,
    "max_position_embeddings": 64,
    "n_positions": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
EXAMPLES = [  # (prompt, target) token ids of four examples of 11, 5, 4 and 8 tokens: packed in rows of 11 tokens as
    ([1, 14, 15, 16, 17, 18, 19], [20, 21, 22, 2]),  # [11], [5, 4 and 2 tokens of padding], [8 and 3 of padding]
    ([1, 11, 12], [13, 2]),
    ([1, 23], [24, 2]),
    ([1, 5, 6, 7, 8], [9, 10, 2]),
]


def tiny_decoder(model_type: str) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type)
    for key, value in SIZES.items():
        if hasattr(config, key):
            try:
                setattr(config, key, value)
            except AttributeError:  # a size derived from others (Falcon's head_dim)
                pass
    if model_type == "gpt_neo":
        config.attention_types, config.attention_layers = [[["global", "local"], 1]], ["global", "local"]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def seq2seq_task():
    recipe = validate_dict(
        {
            "model": "./decoder",
            "task": {"type": "seq2seq", "text_a": "source", "label": "target"},
            "data": {"files": {"train": "t.jsonl", "validation": "v.jsonl"}, "packing": True},
        }
    )
    task = build_task(recipe.task, None, "decoder")
    return recipe, task


@pytest.mark.parametrize("model_type", sorted(DECODER_TYPES))
def test_packed_examples_equal_each_example_alone_or_packing_is_refused(model_type):
    recipe, task = seq2seq_task()
    features = [
        {"input_ids": p + t, "attention_mask": [1] * len(p + t), "labels": [-100] * len(p) + t, "prompt_length": len(p)}
        for p, t in EXAMPLES
    ]
    model = tiny_decoder(model_type)
    padded_batch, packed_batch = GenerationCollator(0, decoder=True)(features), PackingCollator(0, 11)(features)
    with torch.no_grad():
        padded_loss, _ = task.forward(model, padded_batch)
        packed_loss, _ = task.forward(model, packed_batch)
        padded = model(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"]).logits
        packed = model(
            input_ids=packed_batch["input_ids"], position_ids=packed_batch["position_ids"], use_cache=False
        ).logits
    assert packed_batch["input_ids"].shape == (3, 11) and int(packed_batch["examples"]) == 4
    places = [(0, 0, 11), (1, 0, 5), (1, 5, 9), (2, 0, 8)]  # (row, start, end) of each example
    difference = max(float((packed[row, a:b] - padded[i, : b - a]).abs().max()) for i, (row, a, b) in enumerate(places))
    if model_type in PACKING_ISOLATED:
        assert difference < 1e-5
        assert torch.equal(packed_loss.items["task"], padded_loss.items["task"])
        assert torch.allclose(packed_loss.sums["task"], padded_loss.sums["task"], rtol=1e-5)
        assert torch.allclose(packed_loss.per_example[0], padded_loss.per_example[0], rtol=1e-5)
        assert architecture_problems(recipe, "decoder", model_type) == []
    else:  # the examples see each other: refused at validation, naming the architecture
        assert difference > 1e-3
        assert architecture_problems(recipe, "decoder", model_type) == [
            f"data.packing: {model_type} ignores restarting positions, so packed examples would attend to each "
            "other; set data.packing: false"
        ]


@pytest.mark.parametrize("model_type", sorted(DECODER_TYPES))
def test_the_loss_from_target_logits_only_equals_the_full_logits_loss(model_type):
    """The decoder's loss asks the model for the logits of the predicting positions only (`logits_to_keep`);
    on every listed architecture it equals cross-entropy over the full logits, example by example."""
    _, task = seq2seq_task()
    features = [
        {"input_ids": p + t, "attention_mask": [1] * len(p + t), "labels": [-100] * len(p) + t, "prompt_length": len(p)}
        for p, t in EXAMPLES
    ]
    model = tiny_decoder(model_type)
    batch = GenerationCollator(0, decoder=True)(features)
    with torch.no_grad():
        loss, _ = task.forward(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    expected = token_loss(full, batch["labels"], shift=True)
    assert torch.equal(loss.items["task"], expected.items["task"]) and int(loss.items["task"]) == 11
    assert torch.allclose(loss.sums["task"], expected.sums["task"], rtol=1e-6, atol=0)
    assert torch.allclose(loss.per_example[0], expected.per_example[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("family", "model_type", "packs"),
    [
        ("decoder", "llama", True),
        ("decoder", "gpt2", True),
        ("decoder", "opt", False),
        ("encoder-decoder", "t5", False),
    ],
)
def test_packing_auto_packs_where_the_architecture_keeps_examples_apart(family, model_type, packs):
    """The default, data.packing: auto, settles to true on a proven decoder and to false elsewhere (and the run's
    recipe.yaml records the value settled)."""
    recipe, _ = seq2seq_task()
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"packing": "auto"})})
    settled, _ = settle_architecture(recipe, Report(family=family, model_type=model_type))
    assert settled.data.packing is packs
