"""Learning curves with `finetune sweep`: MiniLM-L6 on SST-2 at five training-set sizes x 3 seeds, and on RTE at
two sizes x 3 seeds (about 40 minutes on 2 cores; a learning-rate grid triples RTE's time); and the GLUE recipes'
settings, 3 seeds each (`*-settings`, `cola-*`: about 135 minutes more with bf16 on a CPU that has it). Writes
bench/results/sweeps/<name>.{json,md,png} and bench/results/sweeps.md (the commands, the machine, the library
versions and the tables).

Usage: python bench/sweeps.py [NAME ...]   (default: every sweep below; a re-run finishes an interrupted one)
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib.metadata import version

from glue import REPO, hardware, run_finetune

SWEEPS = {
    "sst2-minilm": [
        "recipes/glue/sst2-minilm.yaml",
        "train.epochs=3",
        "train.eval_every=100000",  # one evaluation, at the end: the curve's point
        "--fractions",
        "0.001,0.003,0.01,0.03,0.1",
        "--seeds",
        "3",
    ],
    "rte-minilm": [
        "recipes/glue/rte-minilm.yaml",
        "--fractions",
        "0.25,0.5",  # the whole split, 3 seeds, adds 50 minutes on 2 cores: --fractions 0.25,0.5,1 extends this sweep
        "--seeds",
        "3",
    ],
}
# The shipped GLUE recipes' settings, 3 seeds each on the whole training split, against the plain HF Trainer's best
# figures on this model (CoLA MCC 0.289, MRPC F1 0.845, STS-B Pearson 0.841, RTE accuracy 0.556): CoLA over a
# learning-rate grid, the others at the recipe's settings.
SETTINGS = ["train.precision=auto", "--fractions", "1", "--seeds", "3"]
SWEEPS |= {
    "cola-settings": ["recipes/glue/cola-minilm.yaml", *SETTINGS, "--set", "train.lr=5e-5,1e-4,2e-4"],
    # its best evaluations came at the last step of 3 epochs: twice as many
    "cola-epochs": ["recipes/glue/cola-minilm.yaml", *SETTINGS, "train.epochs=6", "--set", "train.lr=5e-5,1e-4"],
    # still rising at 6 epochs, lr 1e-4 with a seed slow to start: twice the updates at the same lr per example
    "cola-batch16": ["recipes/glue/cola-minilm.yaml", *SETTINGS, "train.epochs=10", "train.batch_size=16"],
    "mrpc-settings": ["recipes/glue/mrpc-minilm.yaml", *SETTINGS],
    "stsb-settings": ["recipes/glue/stsb-minilm.yaml", *SETTINGS],
    "rte-settings": ["recipes/glue/rte-minilm.yaml", *SETTINGS],
}
RESULTS = REPO / "bench" / "results"


def main(names: list[str]) -> None:
    for name in names or list(SWEEPS):
        folder = REPO / "runs" / "bench" / f"sweep-{name}"
        _, wall, command = run_finetune(["sweep", *SWEEPS[name], "--output", str(folder.relative_to(REPO))], name)
        (RESULTS / "sweeps").mkdir(parents=True, exist_ok=True)
        for suffix in ("md", "png"):
            shutil.copy2(folder / f"sweep.{suffix}", RESULTS / "sweeps" / f"{name}.{suffix}")
        report = json.loads((folder / "sweep.json").read_text())
        report = {"command": command, "wall_min": round(wall / 60, 1), "hardware": hardware(), **report}
        (RESULTS / "sweeps" / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    sections = []
    for name in SWEEPS:
        stored = RESULTS / "sweeps" / f"{name}.json"
        if stored.is_file():
            report = json.loads(stored.read_text())
            body = (RESULTS / "sweeps" / f"{name}.md").read_text().split("\n", 2)[2]
            sections.append(
                f"## {name}\n\n`{report['command']}` ({report['wall_min']} min on {report['hardware']}; a re-run "
                f"reads finished cells back)\n\n{body}\n![{name}](sweeps/{name}.png)\n"
            )
    versions = ", ".join(f"{p} {version(p)}" for p in ("transformers", "datasets", "accelerate"))
    header = (
        "# Learning curves (`make bench-sweeps`)\n\n"
        f"Libraries: {versions}. Each cell is a full `finetune train` run; the mean over seeds ± the sample standard "
        "deviation (min and max in the json, the band in the plot); majority: always predicting the training "
        "split's most frequent class.\n\n"
    )
    (RESULTS / "sweeps.md").write_text(header + "\n".join(sections))


if __name__ == "__main__":
    main(sys.argv[1:])
