"""Training curves as a picture: loss and learning rate by step, and each evaluation metric."""

from __future__ import annotations

from pathlib import Path

from finetune.rundir import LOG_FILE, JsonlLog

PLOT_FILE = "training.png"


def plot_training(run_dir: Path) -> Path | None:
    """Draw log.jsonl into training.png; None when there is nothing to draw."""
    records = JsonlLog(run_dir / LOG_FILE).read()
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith("eval_") for k in r)]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax_loss.set_xlabel("step"), ax_loss.set_ylabel("loss"), ax_loss.legend(loc="upper right")
    ax_lr = ax_loss.twinx()
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="grey", alpha=0.4)
    ax_lr.set_ylabel("learning rate", color="grey")
    names = sorted({k for r in evals for k in r if k.startswith("eval_") and not k.endswith("loss")})
    for name in names:
        ax_eval.plot([r["step"] for r in evals], [r[name] for r in evals], "o-", label=name.removeprefix("eval_"))
    ax_eval.set_xlabel("step"), ax_eval.set_title("evaluation"), ax_eval.legend(loc="lower right")
    fig.suptitle(run_dir.name)
    # fixed margins: tight_layout draws the figure once more to measure its text, doubling the cost of a plot
    fig.subplots_adjust(left=0.07, right=0.93, bottom=0.13, top=0.87, wspace=0.3)
    fig.savefig(run_dir / PLOT_FILE, dpi=100)
    plt.close(fig)
    return run_dir / PLOT_FILE
