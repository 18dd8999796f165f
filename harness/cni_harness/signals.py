"""SIGTERM unwinds like Ctrl-C: `finally` blocks stop what a command started (guests, VMs,
clusters in creation) instead of leaving them running. VMs and guests are daemons: a
harness killed without unwinding would leave them to starve everything after it."""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator


def exit_on_sigterm(signum: int, _frame: Any) -> None:
    """A SIGTERM handler raising SystemExit(128 + signal), as a shell reports it."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """For the block, SIGTERM raises SystemExit; the previous handler comes back after.
    Main thread only (Python's signal rule)."""
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
