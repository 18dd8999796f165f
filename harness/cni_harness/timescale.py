"""How much slower than native this machine runs the harness's waits (pure).

Emulated guests (qemu TCG) run clang, Ansible and the agents many times slower than a
real CPU, so every "wait until ready" of the harness scales by one factor, given by the
environment: `CNI_HARNESS_TIME_SCALE` (default 1). The qemu matrix target sets it for TCG
guests; a user on slow hardware may set it too. It scales waits for readiness only: the
traffic a test sends keeps its own per-packet timeouts.

Ansible gets the same factor as the inventory variable `cni_time_scale` (the configure
role's agent wait, reboot waits).
"""

from __future__ import annotations

from typing import Mapping

from cni_cilium.pacing import scale_from_env

ENV = "CNI_HARNESS_TIME_SCALE"
# TCG against a native run on these machines: clang compiling the datapath, Ansible and
# python start-up measured 6-10x slower in a 2-vCPU TCG guest on 2 shared cores.
TCG_SCALE = 8.0


def time_scale(environ: Mapping[str, str] | None = None) -> float:
    """The factor from the environment; a clear ValueError when it is not a number >= 1."""
    return scale_from_env(ENV, environ)


def scaled(seconds: float, environ: Mapping[str, str] | None = None) -> float:
    """`seconds` stretched by this machine's time scale."""
    return seconds * time_scale(environ)
