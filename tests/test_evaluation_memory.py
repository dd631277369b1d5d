"""Evaluating generated text holds one batch at a time: its peak memory does not grow with the evaluation set."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cases import BY_NAME
from conftest import SHARED_DATA

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from finetune.recipe import validate_dict
    from finetune.zeroshot import zero_shot

    recipe = json.loads(sys.argv[1])
    peaks = []
    for rows in (8, 48):
        recipe["data"]["max_eval_samples"] = rows
        zero_shot(validate_dict(recipe))
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MB, the high-water mark
    print(json.dumps(peaks))
    """
)


def test_generation_evaluation_peak_does_not_grow_with_the_evaluation_set(tmp_path, tiny_llama):
    """A tiny decoder evaluated on 8, then on 48 dialogues in batches of 8 (in a fresh process, so that the
    high-water mark is the evaluation's): the second run's peak is the first's. Keeping each batch's target logits
    (some 2 MB per dialogue on this vocabulary) would raise it by some 80 MB."""
    recipe = BY_NAME["seq2seq-decoder"].recipe(tmp_path, tiny_llama, eval_batch_size=8)
    dialogues = tmp_path / "dialogues.jsonl"
    lines = (SHARED_DATA / "seq2seq" / "dialogsum" / "dialogsum.dev.jsonl").read_text(encoding="utf-8").splitlines()
    dialogues.write_text("\n".join(lines[:48]) + "\n", encoding="utf-8")
    recipe["data"]["files"] = {"train": str(dialogues), "fit": str(dialogues)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(recipe)], capture_output=True, text=True, check=True
    )
    small, large = json.loads(done.stdout.strip().splitlines()[-1])
    assert large - small < 30, (small, large)
