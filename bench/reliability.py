"""Every kill point on every workload: real `finetune train` runs (a BERT classifier, a Llama instruction model on
packed rows, LoRA on a BERT classifier, all tiny) killed with SIGKILL at each point the harness knows (tests/kills.py)
at a randomly drawn call, at random moments, and twice in a row, then resumed; each must end with the uninterrupted
run's weights (tensor by tensor), metrics and log, with no visible file ever half written and nothing left behind.

Usage: python bench/reliability.py [--seed N] [--random K]   (make bench-reliability)
Writes bench/results/reliability.json and reliability.md; work folders go under runs/bench/reliability/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import conftest  # noqa: E402  (the suite's offline settings and tiny checkpoints)
import kills  # noqa: E402
from glue import hardware  # noqa: E402

RESULTS = REPO / "bench" / "results"
WORK = REPO / "runs" / "bench" / "reliability"
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors")


def run(seed: int, randoms: int) -> dict:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    kills.warm()
    sst2 = conftest.sample_file(WORK, conftest.GLUE / "sst2" / "train.tsv", 33)
    models = {kind: conftest._tiny_checkpoint(WORK / f"tiny-{kind}", kind) for kind in ("bert", "llama")}
    cases = []
    for workload in kills.WORKLOADS:
        recipe = kills.workload_recipe(workload, WORK, models["llama" if workload == "decoder" else "bert"], sst2)
        reference_dir = WORK / workload / "reference"
        reference_dir.mkdir(parents=True)
        child = kills.train(
            [recipe, f"output_dir={reference_dir / 'run'}"],
            reference_dir,
            reference_dir / "log.txt",
            counts_file=reference_dir / "counts.json",
        )
        if child.exitcode != 0:
            raise SystemExit(f"{workload}: the uninterrupted run failed; see {reference_dir / 'log.txt'}")
        counts = json.loads((reference_dir / "counts.json").read_text())
        reference = kills.comparable(reference_dir / "run")
        names = [p for p in kills.POINTS if counts.get(p)] + [kills.RANDOM] * randoms + ["twice"]
        for index, name in enumerate(names):
            case = kills.scenario(workload, name, counts, child.seconds, seed + index)
            work = WORK / workload / f"{index:02d}-{name}"
            work.mkdir()
            start = time.perf_counter()
            kills.run_scenario(case, recipe, work, reference)
            outcome = case.outcome
            passed = not outcome["problems"] and all(outcome["killed"])
            cases.append(
                {
                    "workload": workload,
                    "scenario": name,
                    "kills": case.kills,
                    **outcome,
                    "passed": passed,
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(json.dumps(cases[-1]), flush=True)
        cases.append({"workload": workload, "unreached": [p for p in kills.POINTS if not counts.get(p)]})
    return {
        "command": f"python bench/reliability.py --seed {seed} --random {randoms}",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": hardware(),
        "versions": {name: version(name) for name in LIBRARIES},
        "seed": seed,
        "cases": cases,
    }


def table(result: dict) -> str:
    cases = [c for c in result["cases"] if "scenario" in c]
    kills_landed = sum(sum(c["killed"]) for c in cases)
    lines = [
        "# Kill and resume: every kill point",
        "",
        f"`{result['command']}` on {result['machine']}, {result['date']}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        f"**{sum(c['passed'] for c in cases)} of {len(cases)} scenarios passed** ({kills_landed} SIGKILLs landed). A "
        "scenario passes when every kill landed, every resumed run exited 0, no visible file was half written after "
        "any kill, nothing hidden or temporary was left, and the weights (tensor by tensor), metrics and log equal the "
        "uninterrupted run's. Points are described in `tests/kills.py`; `call` is the killed call's number among the "
        "uninterrupted run's calls of that point (drawn with the seed), or the moment in seconds for a random kill; "
        "`runs` is how each attempt started.",
        "",
        "| workload | scenario | kills (point, call or seconds) | runs | passed | problems |",
        "|---|---|---|---|---|---|",
    ]
    for c in cases:
        kills_text = "; ".join(f"{point} {when}" for point, when in c["kills"])
        runs = " → ".join(c["runs"])
        lines.append(
            f"| {c['workload']} | {c['scenario']} | {kills_text} | {runs} | {'yes' if c['passed'] else 'NO'} | "
            f"{'; '.join(c['problems']) or ''} |"
        )
    unreached = [f"{c['workload']}: {', '.join(c['unreached'])}" for c in result["cases"] if c.get("unreached")]
    lines += ["", "Not reached by a workload (its settings never call them): " + "; ".join(unreached) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="draws the killed calls")
    parser.add_argument("--random", type=int, default=3, help="random-moment kills per workload")
    args = parser.parse_args()
    result = run(args.seed, args.random)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "reliability.md").write_text(table(result))
    failed = [c for c in result["cases"] if c.get("passed") is False]
    print(table(result))
    if failed:
        raise SystemExit(f"{len(failed)} scenarios failed")


if __name__ == "__main__":
    main()
