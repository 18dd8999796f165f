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


def time_scale(environ: Mapping[str, str] | None = None) -> float:
    """The factor from the environment; a ValueError naming the variable when it is not a
    number >= 1."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: not a number") from None
    if not value >= 1.0:          # also refuses nan
        raise ValueError(f"{ENV}={raw!r}: must be >= 1 (a slowdown factor)")
    return value


def paced(seconds: float, environ: Mapping[str, str] | None = None) -> float:
    """A poll period `seconds` stretched by the agent's time scale."""
    return seconds * time_scale(environ)
