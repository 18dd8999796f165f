"""The agent's side of the egress gateway: the other agents' health as input, the VIPs as
output (edge around the pure `cni_cilium.egress`).

`view()` and `addresses()` go into each translation; `revision` changes when they do (the
loop then reconciles); after the maps are written, `apply` tells the health endpoint who
the peers are, announces the VIPs this node is now active for (their reverse NAT is
already programmed), publishes whom this agent elected, and logs every move of a role.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from ..egress import EgressView
from ..manifests import Node
from ..translate import Translation
from .arp import VipAnnouncer
from .nodehealth import NodeHealth

log = logging.getLogger("cni-cilium.agent")


class EgressRuntime:
    """The health endpoint and poller, the VIP announcer, and the moves seen (module doc)."""

    def __init__(self, node_name: str):
        self.health = NodeHealth(node_name)
        self.vips = VipAnnouncer()
        self.active: dict[str, str | None] = {}
        self.moves: dict[str, int] = {}
        self.last_move: dict[str, dict] = {}

    def start(self) -> None:
        self.health.start()
        self.vips.start()

    def stop(self) -> None:
        self.health.stop()
        self.vips.stop()

    @property
    def revision(self) -> int:
        return self.health.revision

    def view(self) -> EgressView:
        return self.health.view()

    def addresses(self) -> tuple[str, ...]:
        return self.health.addresses()

    def apply(self, translation: Translation, objects: Sequence, uplink: str | None) -> None:
        """After the maps are written (see the module doc)."""
        self.health.configure(translation.node.internal_ip, uplink or "",
                              {o.name: o.internal_ip for o in objects if isinstance(o, Node)})
        egress = translation.egress
        self.vips.update(egress.announce, uplink)
        self.health.publish(self.vips.announced(),
                            {gw.name: gw.active_node for gw in egress.gateways})
        for gw in egress.gateways:
            before = self.active.get(gw.name)
            if before is not None and before != gw.active_node:   # not the first election
                self.moves[gw.name] = self.moves.get(gw.name, 0) + 1
                self.last_move[gw.name] = {"at": time.time(), "from": before,
                                           "to": gw.active_node}
                log.warning("egress gateway %s: active node %s -> %s (%s)", gw.name, before,
                            gw.active_node or "none", gw.ready.reason)
            elif before != gw.active_node or gw.name not in self.active:
                log.info("egress gateway %s: active node %s (%s)", gw.name,
                         gw.active_node or "none", gw.ready.reason)
            self.active[gw.name] = gw.active_node

    def summary(self, translation: Translation | None) -> dict:
        """The `egress` section of the status (and of `/egress`, with the policies)."""
        eg = translation.egress if translation else None
        return {
            "gateways": [{**g.to_dict(), "moves": self.moves.get(g.name, 0),
                          "lastMove": self.last_move.get(g.name)}
                         for g in (eg.gateways if eg else [])],
            "policies": len(eg.policies) if eg else 0,
            "entries": eg.entries_by_action() if eg else {},
            "announcing": self.vips.status(),
            "health": self.health.status(),
        }
