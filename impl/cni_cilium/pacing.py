"""How much the agent stretches its poll periods (pure).

An idle agent wakes every fraction of a second: the manifest loop, the flow collector, the
egress health polls of every peer. Natively that is a few percent of a CPU; in an emulated
guest (qemu TCG) the same wake-ups took ~60% of a VM's CPU and starved the very workload
under test. `CNI_CILIUM_TIME_SCALE` (default 1, set by the installer from the inventory's
`cni_time_scale`) multiplies those periods; reaction times grow by the same factor.
"""

from __future__ import annotations

import os
from typing import Mapping

ENV = "CNI_CILIUM_TIME_SCALE"


def scale_from_env(name: str, environ: Mapping[str, str] | None = None) -> float:
    """A slowdown factor from the environment variable `name` (default 1); a ValueError
    naming the variable when it is not a number >= 1. The harness reads its own factor
    with it too."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number") from None
    if not value >= 1.0:          # also refuses nan
        raise ValueError(f"{name}={raw!r}: must be >= 1 (a slowdown factor)")
    return value


def time_scale(environ: Mapping[str, str] | None = None) -> float:
    """The agent's factor (`CNI_CILIUM_TIME_SCALE`)."""
    return scale_from_env(ENV, environ)


def paced(seconds: float, environ: Mapping[str, str] | None = None) -> float:
    """A poll period `seconds` stretched by the agent's time scale."""
    return seconds * time_scale(environ)


class CostPacer:
    """When an expensive periodic job (a scan of every manifest file, a count of a map the
    datapath fills) is next due, so that it uses at most `share` of a CPU: a run that took
    d seconds makes the next one due max(floor, d / share) after it started. Its cost grows
    with the cluster (10,000 services: 20,000 files; conntrack: 10^5 entries), so a fixed
    period would let the agent take CPU from the workload it serves."""

    def __init__(self, share: float, floor: float = 0.0):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share {share}: must be in (0, 1]")
        self.share = share
        self.floor = floor
        self.next_at = float("-inf")

    def due(self, now: float) -> bool:
        """Whether a run is due at `now` (monotonic seconds)."""
        return now >= self.next_at

    def ran(self, started: float, ended: float) -> None:
        """Record a run from `started` to `ended`."""
        self.next_at = started + max(self.floor, (ended - started) / self.share)
