"""Whether the agent a start began is running, failed, or still starting (installers wait on
this: `cni-cilium wait-ready`).

The agent writes its status file once running and removes it when it stops; a start that
fails writes the reason (`start-error.json`, with the time) instead. An error older than the
start being judged is an earlier attempt's and is ignored, so a restart loop that predates
the start cannot fail it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable

from . import paths

RUNNING, FAILED, STARTING = "running", "failed", "starting"


@dataclass(frozen=True)
class Readiness:
    state: str          # RUNNING, FAILED or STARTING
    reason: str = ""


def judge(status_present: bool, start_error: dict | None, since: float) -> Readiness:
    """The state from what the agent left (pure)."""
    if status_present:
        return Readiness(RUNNING)
    if start_error is not None and float(start_error.get("time", 0)) >= since:
        return Readiness(FAILED, str(start_error.get("error", "no reason recorded")))
    return Readiness(STARTING)


def _read_error(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None             # absent, or being replaced: look again
    return doc if isinstance(doc, dict) else None


def observe(since: float, status_path: str = paths.AGENT_STATUS,
            error_path: str = paths.AGENT_START_ERROR) -> Readiness:
    """The state now, from the files on this node."""
    return judge(os.path.exists(status_path), _read_error(error_path), since)


def wait(since: float, timeout: float, interval: float = 0.5,
         look: Callable[[float], Readiness] = observe) -> Readiness:
    """Poll until running or failed; STARTING with a reason when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        seen = look(since)
        if seen.state != STARTING:
            return seen
        if time.monotonic() >= deadline:
            return Readiness(STARTING, f"the agent neither ran nor failed within {timeout:.0f} s")
        time.sleep(interval)
