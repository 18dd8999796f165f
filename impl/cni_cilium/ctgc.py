"""Datapath state tied to backends: what to remove when they go, and the least-conn
counts recomputed from conntrack (pure).

A `service` entry pins a connection to the backend chosen on its first packet, so later
packets follow it without a new choice. When that backend leaves the service (its pod was
deleted), the entry would keep sending the flow into the void until it expires (a UDP
client that keeps its port never gets a new backend). The agent removes such entries once
the backend is no longer behind any frontend; the flow's next packet then picks a live
backend, like a new connection. A sessionAffinity entry likewise dies when its backend
leaves its frontend's selection.

least-conn counts (`lb_conns`) are kept by the datapath; the agent recounts them from
conntrack at start and every few seconds (`recount`): entries that expired without a FIN
or RST, or that the LRU map evicted, never gave their count back. A counter that moved
while conntrack was read is left for the next round, so a recount never overwrites what
the datapath did meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .bpfabi import (
    CT_F_CLOSING,
    CT_F_COUNTED,
    CT_SERVICE,
    Affinity,
    AffinityKey,
    BackendKey,
    CtEntry,
    CtKey,
    Frontend,
)

BackendId = tuple  # (address, port, protocol)


def live_backends(frontends: Iterable) -> frozenset[BackendId]:
    """Every (address, port, protocol) behind some frontend, whatever its state (a
    terminating backend still serves its connections)."""
    return frozenset((b.addr, b.port, fe.frontend.proto)
                     for fe in frontends for b in fe.backends)


def stale_service_keys(items: Iterable[tuple[bytes, bytes]], live: frozenset[BackendId]
                       ) -> list[bytes]:
    """Keys of `service` entries whose backend is not in `live`."""
    stale = []
    for raw_key, raw_value in items:
        key = CtKey.decode(raw_key)
        if key.kind != CT_SERVICE:
            continue
        entry = CtEntry.decode(raw_value)
        if (entry.nat_addr, entry.nat_port, key.proto) not in live:
            stale.append(raw_key)
    return stale


def affinity_pairs(frontends: Iterable) -> frozenset[tuple[Frontend, str, int]]:
    """(frontend, backend address, port) a client may be kept on: the selected backends of
    every frontend with session affinity."""
    return frozenset((fe.frontend, b.addr, b.port) for fe in frontends
                     if fe.affinity_timeout for b in fe.selected)


def stale_affinity_keys(items: Iterable[tuple[bytes, bytes]],
                        pairs: frozenset[tuple[Frontend, str, int]]) -> list[bytes]:
    """Keys of affinity entries whose backend is no longer selected by their frontend."""
    stale = []
    for raw_key, raw_value in items:
        frontend = AffinityKey.decode(raw_key).frontend
        backend = Affinity.decode(raw_value).backend
        if (frontend, backend.addr, backend.port) not in pairs:
            stale.append(raw_key)
    return stale


@dataclass
class Recount:
    """What a least-conn recount found in conntrack."""

    live: dict[bytes, int] = field(default_factory=dict)   # lb_backend_key -> connections
    expired: list[bytes] = field(default_factory=list)     # counted entries past expiry


def recount(ct_items: Iterable[tuple[bytes, bytes]], now: float) -> Recount:
    """Counted `service` entries per backend: live ones, and the keys of expired ones."""
    out = Recount()
    for raw_key, raw_value in ct_items:
        key = CtKey.decode(raw_key)
        if key.kind != CT_SERVICE:
            continue
        entry = CtEntry.decode(raw_value)
        if not entry.flags & CT_F_COUNTED:
            continue
        if entry.expires < now:
            out.expired.append(raw_key)
        elif not entry.flags & CT_F_CLOSING:
            backend = BackendKey(entry.nat_addr, entry.nat_port, key.proto).encode()
            out.live[backend] = out.live.get(backend, 0) + 1
    return out


def count_corrections(before: Mapping[bytes, int], after: Mapping[bytes, int],
                      live: Mapping[bytes, int]) -> dict[bytes, int]:
    """Counters to rewrite with the recounted value: those that did not move while
    conntrack was read (`before` and `after` it) and disagree with the recount."""
    fixes = {}
    for key in set(before) | set(after) | set(live):
        if key in after and before.get(key) != after[key]:
            continue            # the datapath counted meanwhile: next round
        if after.get(key, 0) != live.get(key, 0):
            fixes[key] = live.get(key, 0)
    return fixes


def stale_counter_keys(counters: Iterable[bytes], live: frozenset) -> list[bytes]:
    """lb_conns keys of backends no longer behind any frontend (see `live_backends`)."""
    stale = []
    for raw in counters:
        key = BackendKey.decode(raw)
        if (key.addr, key.port, key.proto) not in live:
            stale.append(raw)
    return stale
