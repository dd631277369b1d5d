"""Label values as they appear in data (class names, ids, numbers as text) mapped onto the recipe's classes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def label_id(value: Any, labels: list[str]) -> int | None:
    """The class id of a raw label: a class name, or an integer id into `labels`; None when it is neither."""
    if value is None:
        return None
    text = str(value).strip()  # a bool reads as True / False, the names infer_labels gives it
    if text in labels:
        return labels.index(text)
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not isinstance(value, bool) and text.lstrip("-").isdigit() and 0 <= int(text) < len(labels):
        return int(text)
    return None


def infer_labels(values: Iterable[Any]) -> list[str]:
    """Class names from the training labels: integers in numeric order, other names sorted."""
    names = {str(v).strip() for v in values if v is not None and str(v).strip() != ""}
    if all(n.lstrip("-").isdigit() for n in names):
        return [str(n) for n in sorted(int(n) for n in names)]
    return sorted(names)


def regression_target(value: Any) -> float | None:
    """The float target of a regression label, or None when the value is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
