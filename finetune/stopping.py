"""Stopping a run cleanly: SIGTERM (what a scheduler sends before preempting) and SIGINT (Ctrl-C) are noted, and
the training loop saves a checkpoint at the next step boundary and stops."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """While training: SIGTERM, SIGINT and SIGUSR1 are noted (the list holds the first one's number) rather than
    killing the process, so the loop can checkpoint at the next step boundary. A second SIGTERM or SIGINT acts as it
    would without this; SIGUSR1 (Slurm's warning before a time limit, and what a worker gets when its launcher
    dies, once per thread the launcher had) never does."""
    received: list[int] = []
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield received
        return
    previous = {number: signal.getsignal(number) for number in handled}

    def note(number: int, frame: Any) -> None:
        if received:
            return
        received.append(number)
        log.warning("%s: stopping after this step with a checkpoint", signal.Signals(number).name)
        for each in (signal.SIGTERM, signal.SIGINT):  # a second one stops at once
            signal.signal(each, previous[each])

    for number in handled:
        signal.signal(number, note)
    try:
        yield received
    finally:
        for number in handled:
            signal.signal(number, previous[number])


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher() -> None:
    """A worker of `accelerate launch` (or torchrun) gets SIGUSR1 when its launcher dies, however it died (Linux):
    killing the launcher stops every worker at a checkpoint, as a scheduler's SIGTERM would, instead of leaving
    them training into a run folder no one watches. Before training starts, SIGUSR1 ends the process."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGUSR1)
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGUSR1)
