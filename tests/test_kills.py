"""A run killed with SIGKILL anywhere (mid-step, while a checkpoint, best/ or the final weights are written, between
two renames, during tokenization, at a random moment, and again during its resume) resumes to the uninterrupted
run's weights, tensor by tensor, and its metrics and log; no visible file is ever half written and nothing is left
behind. The harness is tests/kills.py; `make bench-reliability` runs every kill point, this file the fast ones."""

from __future__ import annotations

import json

import kills
import pytest
from conftest import GLUE, sample_file


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_bert, tiny_llama) -> dict:
    """Per workload: its recipe, and its uninterrupted run's results, calls per kill point and duration."""
    kills.warm()
    folder = tmp_path_factory.mktemp("kill-references")
    sst2 = sample_file(folder, GLUE / "sst2" / "train.tsv", 33)
    found = {}
    for workload in kills.WORKLOADS:
        recipe = kills.workload_recipe(workload, folder, tiny_llama if workload == "decoder" else tiny_bert, sst2)
        work = folder / workload
        work.mkdir()
        child = kills.train([recipe, f"output_dir={work / 'run'}"], work, work / "log.txt", counts_file=work / "n")
        assert child.exitcode == 0, (work / "log.txt").read_text()
        counts = json.loads((work / "n").read_text())
        found[workload] = (recipe, kills.comparable(work / "run"), counts, child.seconds)
    return found


@pytest.mark.parametrize(("workload", "point"), kills.SUITE)
def test_a_killed_run_resumes_to_the_uninterrupted_result(workload, point, references, tmp_path):
    recipe, reference, counts, seconds = references[workload]
    case = kills.run_scenario(kills.scenario(workload, point, counts, seconds, seed=0), recipe, tmp_path, reference)
    assert case.outcome["problems"] == []
    assert case.outcome["killed"] == [True] * len(case.kills)  # every kill landed before the run could finish
