"""Conntrack entries of connections whose backend is gone (pure).

A `service` entry pins a connection to the backend chosen on its first packet, so later
packets follow it without a new choice. When that backend leaves the service (its pod was
deleted), the entry would keep sending the flow into the void until it expires (a UDP
client that keeps its port never gets a new backend). The agent removes such entries once
the backend is no longer behind any frontend; the flow's next packet then picks a live
backend, like a new connection.
"""

from __future__ import annotations

from typing import Iterable

from .bpfabi import CT_SERVICE, CtEntry, CtKey

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
