"""A finished sweep written out: `sweep.json` (every cell's metrics), `sweep.md` (the table) and `sweep.png` (the
metric against training examples on a log scale, the spread over seeds, the references, the best setting)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from finetune.recipe import Recipe
from finetune.rundir import write_json

SWEEP_FILE, TABLE_FILE, PLOT_FILE = "sweep.json", "sweep.md", "sweep.png"


def write_report(
    output: Path, recipe: Recipe, found: list[dict[str, Any]], references: dict[str, Any], settings: list[str]
) -> dict[str, Any]:
    """Write the three files for the cells `found` (each with its run's metrics); the sweep.json content."""
    metric = recipe.task.metric_names[0]
    groups = summary(found, metric)
    report = {
        "recipe": recipe.name,
        "metric": metric,
        "grid": settings,
        "references": references,
        "summary": groups,
        "best": best_settings(groups) if settings else {},
        "cells": found,
    }
    write_json(output / SWEEP_FILE, report)
    (output / TABLE_FILE).write_text(table(report), encoding="utf-8")
    plot(report, output / PLOT_FILE)
    return report


def best_settings(groups: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For each training-set size, the setting with the highest mean over seeds."""
    best: dict[int, dict[str, Any]] = {}
    for group in groups:
        if group["examples"] not in best or group["mean"] > best[group["examples"]]["mean"]:
            best[group["examples"]] = group
    return {str(examples): group["setting"] for examples, group in sorted(best.items())}


def _label(setting: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in setting.items()) or "recipe"


def table(report: dict[str, Any]) -> str:
    """The sweep as Markdown: one row per training-set size, one column per setting (mean ± std over seeds)."""
    groups = report["summary"]
    settings = list(dict.fromkeys(_label(g["setting"]) for g in groups))
    sizes = sorted({g["examples"] for g in groups})
    seeds = max(g["seeds"] for g in groups)
    lines = [
        f"# Sweep: {report['recipe']}, {report['metric']} (mean ± sample std over {seeds} seeds; min-max in "
        "sweep.json)",
        "",
        "| training examples | " + " | ".join(settings) + (" | best |" if report["best"] else " |"),
        "|---" * (len(settings) + 1 + bool(report["best"])) + "|",
    ]
    for size in sizes:
        cells = {_label(g["setting"]): g for g in groups if g["examples"] == size}
        row = [f"{cells[s]['mean']:.3f} ± {cells[s]['std']:.3f}" if s in cells else "" for s in settings]
        best = [_label(report["best"][str(size)])] if report["best"] else []
        lines.append(f"| {size} | " + " | ".join(row + best) + " |")
    references = {k: v for k, v in report["references"].items() if v is not None}
    if references:
        lines += [
            "",
            "References: " + ", ".join(f"{name.replace('_', '-')} {value:.3f}" for name, value in references.items()),
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """The learning curve: each setting's mean with its min-max band over seeds and every seed's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = report["summary"]
    for setting in dict.fromkeys(_label(g["setting"]) for g in groups):
        mine = [g for g in groups if _label(g["setting"]) == setting]
        sizes = [g["examples"] for g in mine]
        (line,) = ax.plot(sizes, [g["mean"] for g in mine], "o-", label=setting)
        ax.fill_between(sizes, [g["min"] for g in mine], [g["max"] for g in mine], alpha=0.2, color=line.get_color())
        points = [c for c in report["cells"] if _label(c["setting"]) == setting]
        ax.scatter(
            [c["examples"] for c in points],
            [c["metrics"][report["metric"]] for c in points],
            s=8,
            color=line.get_color(),
            alpha=0.6,
        )
    for (name, value), style in zip(report["references"].items(), ("--", ":")):
        if value is not None:
            ax.axhline(value, linestyle=style, color="grey", label=name.replace("_", "-"))
    for size, setting in report["best"].items():
        best = next(g for g in groups if g["examples"] == int(size) and g["setting"] == setting)
        ax.plot([best["examples"]], [best["mean"]], "*", color="black", markersize=12)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel(report["metric"])
    ax.set_title(
        f"{report['recipe']}: {report['metric']} by training examples" + (" (* best)" if report["best"] else "")
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(cells: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per (examples, setting): the metric's mean, sample standard deviation, min and max over the seeds."""
    groups: dict[tuple, list[float]] = {}
    for cell in cells:
        groups.setdefault((cell["examples"], json.dumps(cell["setting"])), []).append(cell["metrics"][metric])
    return [
        {
            "examples": examples,
            "setting": json.loads(setting),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
            "seeds": len(values),
        }
        for (examples, setting), values in sorted(groups.items(), key=lambda item: item[0][0])  # grid order
    ]
