"""Stopping a run cleanly: SIGTERM (what a scheduler sends before preempting) and SIGINT (Ctrl-C) are noted, and
the training loop saves a checkpoint at the next step boundary and stops."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """While training: SIGTERM and SIGINT are noted (the list holds the first one's number) rather than killing the
    process, so the loop can checkpoint at the next step boundary; a second one acts as it would without this."""
    received: list[int] = []
    handled = (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield received
        return
    previous = {number: signal.getsignal(number) for number in handled}

    def note(number: int, frame: Any) -> None:
        received.append(number)
        log.warning(
            "%s: stopping after this step with a checkpoint (again to stop at once)", signal.Signals(number).name
        )
        for each in handled:
            signal.signal(each, previous[each])

    for number in handled:
        signal.signal(number, note)
    try:
        yield received
    finally:
        for number in handled:
            signal.signal(number, previous[number])
