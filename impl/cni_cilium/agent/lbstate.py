"""The agent's upkeep of the LB algorithms' datapath state (`ctgc` decides, this writes).

- sessionAffinity: entries whose backend left its frontend's selection are deleted, so
  the client's next connection chooses again;
- least-conn: counters of backends that are gone are deleted; at start and every
  LEAST_CONN_RECOUNT_SECONDS while a least-conn frontend exists, counted conntrack entries
  that expired without a FIN/RST are deleted and each counter that disagrees with
  conntrack (and did not move meanwhile) is corrected (`ctgc.recount`);
- the services view: each least-conn backend's active connections, each maglev backend's
  share of its table.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable, Mapping

from ..bpfabi import BackendKey, conn_count, decode_conn_count
from ..ctgc import (
    affinity_pairs,
    count_corrections,
    recount,
    stale_affinity_keys,
    stale_counter_keys,
)
from ..datapath.bpfsys import PinnedMap
from ..maglev import shares
from ..translate import FrontendView, Translation

log = logging.getLogger("cni-cilium.agent")

# How often least-conn counts are recounted from conntrack (expired and evicted
# connections give theirs back); only while a least-conn frontend is programmed.
LEAST_CONN_RECOUNT_SECONDS = 5.0


class LbState:
    """Affinity and least-conn state kept in line with the programmed services."""

    def __init__(self, maps: Mapping[str, PinnedMap], lock: threading.RLock):
        self.maps = maps
        self.lock = lock
        self._affinity_pairs: frozenset | None = None   # None: not checked since start
        self.stale_affinity_removed = 0
        self.least_conn: dict[str, Any] = {"recounts": 0, "expiredRemoved": 0,
                                           "corrected": 0, "last": None}
        self._next_recount = time.monotonic() + LEAST_CONN_RECOUNT_SECONDS

    def forget_gone_affinities(self, translation: Translation) -> None:
        """Delete affinity entries of backends their frontend no longer selects (when a
        selection shrank, and at start)."""
        pairs = affinity_pairs(translation.frontends)
        if self._affinity_pairs is not None and pairs >= self._affinity_pairs:
            self._affinity_pairs = pairs
            return
        affinity = self.maps["lb_affinity"]
        removed = sum(1 for key in stale_affinity_keys(affinity.items(), pairs)
                      if affinity.delete(key))
        self._affinity_pairs = pairs
        if removed:
            with self.lock:
                self.stale_affinity_removed += removed
            log.info("affinity: removed %d clients' entries for backends that left their "
                     "service; their next connection chooses again", removed)

    def forget_gone_counters(self, live: frozenset) -> None:
        """Delete least-conn counters of backends behind no frontend (see `live_backends`)."""
        counters = self.maps["lb_conns"]
        for key in stale_counter_keys(list(counters.keys()), live):
            counters.delete(key)

    def counters(self) -> dict[bytes, int]:
        return {key: decode_conn_count(value) for key, value in self.maps["lb_conns"].items()}

    def recount(self) -> None:
        """Delete counted conntrack entries that expired without a FIN/RST and set each
        counter that disagrees with conntrack (see `ctgc.recount`)."""
        started = time.monotonic()
        ct, counters = self.maps["ct4"], self.maps["lb_conns"]
        before = self.counters()
        found = recount(ct.items(), time.monotonic())
        expired = 0
        for key in found.expired:
            raw = ct.lookup(key)   # look again: a new connection may have reused the tuple
            if raw is not None and recount([(key, raw)], time.monotonic()).expired and \
                    ct.delete(key):
                expired += 1
        fixes = count_corrections(before, self.counters(), found.live)
        for key, value in fixes.items():
            counters.update(key, conn_count(value))
        live = sum(found.live.values())
        with self.lock:
            self.least_conn["recounts"] += 1
            self.least_conn["expiredRemoved"] += expired
            self.least_conn["corrected"] += len(fixes)
            self.least_conn["last"] = {"at": time.time(), "live": live,
                                       "expiredRemoved": expired, "corrected": len(fixes),
                                       "seconds": round(time.monotonic() - started, 4)}
        if expired or fixes:
            log.info("least-conn: recounted %d live connections; %d expired ones removed, "
                     "%d counters corrected", live, expired, len(fixes))

    def tick(self, frontends: Iterable[FrontendView]) -> None:
        """From the agent's loop: recount when due and a least-conn frontend exists."""
        now = time.monotonic()
        if now < self._next_recount:
            return
        self._next_recount = now + LEAST_CONN_RECOUNT_SECONDS
        if any(f.algorithm == "least-conn" for f in frontends):
            try:
                self.recount()
            except Exception:
                log.exception("least-conn recount failed")

    def frontend_docs(self, frontends: list[FrontendView]) -> list[dict]:
        """`service list` entries with what each algorithm works from."""
        counters = self.counters() if any(f.algorithm == "least-conn" for f in frontends) \
            else {}
        docs = []
        for fe in frontends:
            doc = fe.to_dict()
            if fe.algorithm == "least-conn":
                doc["activeConnections"] = {
                    f"{b.addr}:{b.port}": max(0, counters.get(
                        BackendKey(b.addr, b.port, fe.frontend.proto).encode(), 0))
                    for b in fe.selected}
            if doc["maglev"]:
                doc["maglev"]["shares"] = shares(fe.selected, fe.maglev_table_size)
            docs.append(doc)
        return docs

    def status(self) -> dict:
        with self.lock:
            return {"staleAffinityRemoved": self.stale_affinity_removed,
                    "leastConn": dict(self.least_conn)}
