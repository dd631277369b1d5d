"""Shared fixtures: offline settings, the shared data mirror, the model mirror holding the packaged MiniLM under its
Hub id (as `make setup` links it), tiny checkpoints built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from finetune.mirrors import link_packaged

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GLUE = SHARED_DATA / "glue"
MODEL_MIRROR = REPO / ".cache" / "models"  # the Makefile's

os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "FINETUNE_DATA_MIRROR": str(SHARED_DATA),
        "FINETUNE_MODEL_MIRROR": str(MODEL_MIRROR),
    }
)
link_packaged(MODEL_MIRROR)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`'s workers share the cores: one thread each, as sweep --jobs
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "packaged:SmolLM2-135M-Instruct-Q4_1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the real SmolLM2 run on one worker (`--dist loadgroup`), which converts the GGUF file once."""
    for item in items:
        if "smollm2_converted" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smollm2"))


@pytest.fixture(autouse=True, scope="session")
def session_cache(tmp_path_factory) -> Path:
    """FINETUNE_CACHE for the whole session (launched processes too), so a packaged GGUF file is converted once."""
    cache = tmp_path_factory.mktemp("finetune-cache")
    os.environ["FINETUNE_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def smollm2_converted() -> tuple:
    """The packaged SmolLM2 as the code under test found it (a GGUF file) and the plain checkpoint it converted it
    into, once per session; every test that loads the real SmolLM2 asks for this first."""
    from finetune.gguf_models import local_checkpoint
    from finetune.mirrors import resolve_model

    found = resolve_model(SMOLLM2)
    return found, local_checkpoint(found)


def _tiny_checkpoint(folder: Path, kind: str, width: int = 32) -> Path:
    """A 2-layer, 32-wide (or `width`) model of `kind`, randomly initialised, saved with MiniLM's WordPiece tokenizer
    (any vocabulary serves a tiny model; decoders get GPT-1's tokens added by the code under test)."""
    import torch
    from transformers import (
        AutoTokenizer,
        BartConfig,
        BartModel,
        BertConfig,
        BertModel,
        ElectraConfig,
        ElectraForPreTraining,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    from finetune.mirrors import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM).location)
    sizes = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    build = {
        "bert": lambda: BertModel(BertConfig(**sizes)),
        "electra": lambda: ElectraForPreTraining(ElectraConfig(embedding_size=32, **sizes)),
        "gpt2": lambda: GPT2LMHeadModel(
            GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256)
        ),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **sizes)),
        # BART's classification head reads the final decoder state at the last eos ([SEP] here)
        "bart": lambda: BartModel(
            BartConfig(
                vocab_size=tokenizer.vocab_size,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=256,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id,
                bos_token_id=tokenizer.cls_token_id,
                decoder_start_token_id=tokenizer.sep_token_id,
            )
        ),
        # T5 ends sequences with eos ([SEP] here) and starts the decoder from pad, as the real one does
        "t5": lambda: T5ForConditionalGeneration(
            T5Config(
                vocab_size=tokenizer.vocab_size,
                d_model=32,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=2,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        ),
    }
    build[kind]().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _session_model(kind: str, description: str):
    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory) -> Path:
        return _tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)

    fixture.__doc__ = description
    return fixture


tiny_bert = _session_model("bert", "A 2-layer, 32-wide BERT, randomly initialised.")
tiny_electra = _session_model(
    "electra", "A 2-layer ELECTRA discriminator (ElectraForPreTraining), randomly initialised."
)
tiny_gpt2 = _session_model("gpt2", "A 2-layer GPT-2 language model, randomly initialised.")


@pytest.fixture(scope="session")
def tiny_bert_64(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide BERT: bitsandbytes' 4-bit layers need widths divisible by 64."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert-64"), "bert", width=64)


@pytest.fixture(scope="session")
def tiny_bert_sst2(tmp_path_factory, tiny_bert) -> Path:
    """The tiny BERT with a classifier head for SST-2's classes 0 and 1 (randomly initialised, seeded): a checkpoint
    fine-tuned for the task, as a distillation's teacher."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert-sst2")
    torch.manual_seed(0)
    labels = {"id2label": {0: "0", 1: "1"}, "label2id": {"0": 0, "1": 1}}
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, **labels).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    return folder


tiny_bart = _session_model("bart", "A 2+2-layer BART encoder-decoder, randomly initialised.")
tiny_t5 = _session_model("t5", "A 2+2-layer T5 encoder-decoder with its LM head, randomly initialised.")
tiny_llama = _session_model(
    "llama", "A 2-layer Llama-style language model (RoPE, RMSNorm, SwiGLU), randomly initialised."
)


def _corpus() -> list[str]:
    """A few thousand sentences of the shared data: SST-2 and RTE sentences, COPA premises and choices, DialogSum
    dialogues; what the real-kind tokenizers are trained on."""
    import json

    sst2 = [line.split("\t")[0] for line in (GLUE / "sst2" / "train.tsv").read_text().splitlines()[1:3001]]
    rte = [t for line in (GLUE / "rte" / "train.tsv").read_text().splitlines()[1:501] for t in line.split("\t")[1:3]]
    copa = [json.loads(line) for line in (SHARED_DATA / "choice/copa/train.jsonl").read_text().splitlines()]
    dialogues = (SHARED_DATA / "seq2seq/dialogsum/dialogsum.dev.jsonl").read_text().splitlines()[:200]
    return [
        *sst2,
        *rte,
        *[row[key] for row in copa for key in ("premise", "choice1", "choice2")],
        *[json.loads(line)["dialogue"] for line in dialogues],
    ]


def _real_kind_checkpoint(folder: Path, kind: str) -> Path:
    """A 2+2-layer T5 with a SentencePiece unigram tokenizer (its </s>, <pad> and 100 <extra_id_N> sentinels), or
    a BART with a byte-level BPE tokenizer (<s> ... </s>, <mask>), both trained here on `_corpus()`."""
    import json

    import torch
    from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BartTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
        T5TokenizerFast,
    )

    torch.manual_seed(0)
    if kind == "t5":
        trained = SentencePieceUnigramTokenizer()
        trained.train_from_iterator(
            _corpus(),
            vocab_size=2000,
            special_tokens=["<pad>", "</s>", "<unk>"],
            unk_token="<unk>",
            show_progress=False,
        )
        vocab = [tuple(piece) for piece in json.loads(trained._tokenizer.to_str())["model"]["vocab"]]
        tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=100)
        model = T5ForConditionalGeneration(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=2,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,  # T5's own config.json: the decoder starts from pad
            )
        )
    else:
        trained = ByteLevelBPETokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        trained.train_from_iterator(_corpus(), vocab_size=2000, special_tokens=specials, show_progress=False)
        found = json.loads(trained._tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in found["merges"]]
        tokenizer = BartTokenizerFast(vocab=found["vocab"], merges=merges)
        sizes = dict(encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2)
        model = BartForConditionalGeneration(
            BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, **sizes)
        )  # BART's own conventions: bos 0, pad 1, eos 2 (the decoder's start)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def t5_sentencepiece(tmp_path_factory) -> Path:
    """A tiny T5 with a SentencePiece unigram tokenizer of T5's kind, trained on the shared data."""
    return _real_kind_checkpoint(tmp_path_factory.mktemp("t5-sentencepiece"), "t5")


@pytest.fixture(scope="session")
def bart_bytelevel(tmp_path_factory) -> Path:
    """A tiny BART with a byte-level BPE tokenizer of BART's kind, trained on the shared data."""
    return _real_kind_checkpoint(tmp_path_factory.mktemp("bart-bytelevel"), "bart")


def sample_file(folder: Path, source: Path, lines: int) -> Path:
    """The first `lines` lines of a real data file (header included), copied into `folder`."""
    path = folder / f"sample{''.join(source.suffixes)}"
    path.write_text("\n".join(source.read_text(encoding="utf-8-sig").splitlines()[:lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def sst2_rows(tmp_path) -> Path:
    """The first 32 real SST-2 training rows as a TSV file, with both classes present."""
    return sample_file(tmp_path, GLUE / "sst2" / "train.tsv", 33)


def recipe_file(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    """Write a recipe into `folder` and return its path."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*argv: str):
    """The CLI in-process; returns its CliResult."""
    from finetune.cli import run

    return run([str(a) for a in argv])
