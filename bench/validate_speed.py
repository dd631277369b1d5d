"""How long `finetune validate` takes on the GLUE recipes, against importing torch and transformers alone.

Usage: python bench/validate_speed.py   (writes bench/results/validate-speed.json)
Each command runs 3 times in a fresh process; the best time counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes" / "glue").glob("*-minilm.yaml"))


def best_of(command: list[str], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    validate = best_of([str(REPO / ".venv" / "bin" / "finetune"), "validate", *RECIPES])
    baseline = best_of([sys.executable, "-c", "import torch, transformers.models.bert"])
    result = {
        "command": f"finetune validate {' '.join(RECIPES)}",
        "recipes": len(RECIPES),
        "validate_s": round(validate, 2),
        "baseline_import_torch_transformers_s": round(baseline, 2),
        "ratio_validate_to_baseline": round(validate / baseline, 2),
        "data_mirror": bool(os.environ.get("FINETUNE_DATA_MIRROR")),
    }
    (REPO / "bench" / "results" / "validate-speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
