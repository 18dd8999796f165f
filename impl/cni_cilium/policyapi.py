"""The agent's policy side: its API routes (/policy, /identities, /flows), its status
section, and the flow collector's life cycle (edge: owns the collector thread).

Kept apart from the reconcile loop, which only hands over the translation in effect.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

from . import api
from .flowcollector import FlowCollector
from .policy.compute import PolicyTranslation
from .policy.flows import FlowBuffer, FlowFilter

log = logging.getLogger("cni-cilium.policy")

RING = "flow_events"
MAX_QUERY_FLOWS = 5000


class PolicyService:
    def __init__(self, node: str, translation: Callable[[], PolicyTranslation | None]):
        self.node = node
        self.translation = translation
        self.flows = FlowBuffer()
        self.collector: FlowCollector | None = None
        self.collector_error = ""

    def start(self, pin_dir: str) -> None:
        """Start draining the pinned flow ring buffer (the agent runs on without flows if it
        cannot, and says why in its status)."""
        try:
            self.collector = FlowCollector(os.path.join(pin_dir, RING), self._context,
                                           self.node, self.flows).start()
        except OSError as exc:
            self.collector_error = str(exc)
            log.error("flows: cannot read the flow ring buffer: %s", exc)

    def _context(self):
        tr = self.translation()
        if tr is None:
            return {}, {}, {}
        return tr.identities, tr.names, tr.rules

    def close(self) -> None:
        if self.collector is not None:
            self.collector.stop()

    # ------------------------------------------------------------ API
    def routes(self) -> dict[str, api.Route]:
        return {"/policy": self._policy, "/identities": self._identities,
                "/flows": api.with_query(self._flows)}

    def _policy(self) -> api.Response:
        tr = self.translation()
        return api.json_response(tr.to_dict() if tr else {"error": "not translated yet"},
                                 200 if tr else 503)

    def _identities(self) -> api.Response:
        tr = self.translation()
        return api.json_response({"identities": tr.identity_list() if tr else []})

    def _flows(self, query: Mapping[str, str]) -> api.Response:
        """?since=SEQ&last=N&verdict=&from_ip=&to_ip=&to_port=&protocol="""
        try:
            flt = FlowFilter.from_query(query)
            since = int(query.get("since", "0"))
            last = int(query["last"]) if query.get("last") else None
        except ValueError as exc:
            return api.json_response({"error": str(exc)}, 400)
        last = min(last or MAX_QUERY_FLOWS, MAX_QUERY_FLOWS)
        return api.json_response({"node": self.node, "seen": self.flows.seen,
                                  "flows": self.flows.query(flt, since, last)})

    # ------------------------------------------------------------ status
    def status(self, stats: Mapping[str, int]) -> dict:
        tr = self.translation()
        doc = tr.to_dict() if tr else {}
        return {
            "auditMode": doc.get("auditMode", False),
            "policies": [p["name"] for p in doc.get("policies", [])],
            "enforcing": [s for s in doc.get("subjects", [])
                          if s["ingressEnforced"] or s["egressEnforced"]],
            "identities": doc.get("identities", 0),
            "entries": doc.get("entries", 0),
            "flows": {"buffered": len(self.flows), "seen": self.flows.seen,
                      "events": stats.get("flow_events", 0),
                      "suppressed": stats.get("flow_suppressed", 0),
                      "lost": stats.get("flow_lost", 0),
                      "collector": "running" if self.collector else
                      f"not running: {self.collector_error}"},
        }
