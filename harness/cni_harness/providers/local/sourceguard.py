"""Anti-spoofing on the local fabric, like IP source guard / strict uRPF on a real switch.

When on, the fabric bridge accepts IPv4 from each node's port only with a source address
that belongs to that node: its InternalIP or an address of its pod CIDR (native routing
carries pod addresses between nodes). Everything else from a node port is counted and
dropped. Direct server return breaks under such a rule, as the module's documentation warns:
the receiving node forwards the client's packets with the client's source, and the backend's
node answers with the receiving node's address.

The rules are an nftables `bridge` table in the fabric namespace; this module renders it and
reads its counters back (pure). The provider applies it (`LocalProvider.set_source_guard`).
"""

from __future__ import annotations

import json

from .addressing import ClusterPlan

TABLE = "cni_harness_source_guard"
CAUSE = "asymmetric routing blocked by the source guard on the fabric (uRPF/anti-spoofing)"


def ruleset(plan: ClusterPlan) -> str:
    """An `nft -f` script that (re)creates the guard atomically."""
    rules = [f'\t\tiifname "{n.fabric_port}" ip saddr != {{ {n.ip}, {n.pod_cidr} }} '
             f'counter drop comment "{n.name}"' for n in plan.nodes]
    return "\n".join([
        f"table bridge {TABLE}",          # so that the delete below never fails
        f"delete table bridge {TABLE}",
        f"table bridge {TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority -200; policy accept;",
        *rules,
        "\t}",
        "}",
    ]) + "\n"


def removal() -> str:
    """An `nft -f` script that removes the guard (also when it is not there)."""
    return f"table bridge {TABLE}\ndelete table bridge {TABLE}\n"


def parse_drops(nft_json: str) -> dict[str, int]:
    """Packets dropped per node from `nft -j list table bridge TABLE` output."""
    drops: dict[str, int] = {}
    for item in json.loads(nft_json).get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                drops[rule["comment"]] = int(expr["counter"]["packets"])
    return drops
