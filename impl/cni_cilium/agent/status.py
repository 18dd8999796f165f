"""What the agent reports: the status document (`/status`, status.json, `cni-cilium
status`), the services view (`/services`) and the Prometheus metrics (`/metrics`).

Read-only views of a running `Agent`, served from the API thread. A feature that adds
state (flows, an LB algorithm's view, an egress gateway's election) adds its section to
`status` and, when it is a number worth graphing, to `cni_cilium.metrics`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from .. import api
from ..bpfabi import MAP_CAPACITY, STAT_NAMES, STATE_SELF_HEALS, index_key
from ..datapath.bpfsys import PinnedMap
from ..metrics import render_metrics
from ..translate import Translation
from ..tunnel import VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI

if TYPE_CHECKING:
    from .reconcile import Agent


def status(agent: Agent) -> dict:
    """Everything `cni-cilium status --json` shows."""
    with agent.lock:
        tr = agent.translation
        settings = agent.settings
        devices = agent.devices
        doc = {
            "node": agent.node_name,
            "pid": os.getpid(),
            "state": "running" if tr is not None and tr.node is not None else "waiting",
            "started": agent.started,
            "uptimeSeconds": round(time.time() - agent.started, 1),
            "restarts": agent.restarts,
            "selfHeals": agent.state_value(STATE_SELF_HEALS),
            "staleConntrackRemoved": agent.stale_ct_removed,
            **agent.lb.status(),
            "selfHealsThisRun": agent.self_heals_run,
            "lastSelfHeal": agent.last_self_heal,
            "rebootRequired": agent.reboot_required,
            "modes": {
                "tunnelMode": agent.tunnel_in_effect,
                "tunnelModeConfigured": settings.tunnelMode,
                "tunnelModePending": settings.tunnelMode if agent.reboot_required else None,
                "lbModeConfigured": settings.bpfLBMode,
                "lbMode": dict(tr.lb_mode) if tr else {},
                "masqueradeMode": settings.masqueradeMode,
                "createNodeRoutes": agent.settings_in_effect().effective_create_node_routes,
                "kubeProxyReplacement": True,
                "lbAlgorithm": "random",
                "extraLoadBalancerAlgorithms": settings.extraLoadBalancerAlgorithmsEnabled,
                "lbAlgorithms": dict(Counter(f.algorithm for f in tr.frontends)) if tr else {},
                "maglevTableSize": agent.maglev_table_size,
            },
            "bpf": agent.datapath.describe(),
            "uplink": devices.uplink,
            "deviceErrors": dict(devices.device_errors),
            "endpoints": [r.to_dict() for r in devices.endpoints.values()],
            "services": {"services": tr.services if tr else 0,
                         "frontends": len(tr.frontends) if tr else 0},
            "hostPorts": {"frontends": tr.host_ports if tr else 0,
                          "defaultAddresses": list(tr.host_port_addresses) if tr else [],
                          "allAddresses": settings.hostPortAllAddresses,
                          "nodeAddresses": list(agent.egress.addresses())},
            "egress": agent.egress.summary(tr),
            "healthChecks": [{"port": port, "service": f"{hc.namespace}/{hc.name}",
                              "localEndpoints": hc.local_endpoints, "status": hc.status}
                             for port, hc in sorted(tr.health_checks.items())] if tr else [],
            "routes": dict(tr.node_routes) if tr else {},
            "tunnel": _tunnel_view(agent, tr),
            "problems": (agent.config_problems + agent.manifest_problems
                         + (tr.problems if tr else [])),
            "warnings": list(tr.warnings) if tr else [],
            "reconcile": {"count": agent.reconciles, "errors": agent.reconcile_errors,
                          **agent.last_reconcile},
        }
    doc["devices"] = agent.devices.attachment_view()
    doc["maps"] = _map_fill(agent)
    doc["policy"] = agent.policy.status(datapath_stats(agent))
    return doc


def _tunnel_view(agent: Agent, tr: Translation | None) -> dict:
    view: dict[str, Any] = {"mode": agent.tunnel_in_effect, "podMTU": agent.pod_mtu}
    if agent.overlay:
        view.update({"device": VXLAN_DEVICE, "ifindex": agent.devices.tunnel_ifindex,
                     "port": VXLAN_PORT, "vni": VXLAN_VNI,
                     "peers": dict(tr.tunnel_routes) if tr else {}})
    return view


def _map_fill(agent: Agent) -> dict[str, dict]:
    with agent.lock:
        counts = {name: len(entries) for name, entries in agent.programmed.items()}
    counts["ct4"] = _ct_count(agent)
    out = {}
    for name, count in counts.items():
        cap = MAP_CAPACITY[name]
        out[name] = {"entries": count, "capacity": cap, "fill": round(count / cap, 6)}
    return out


def _ct_count(agent: Agent) -> int:
    """Conntrack's entries, counted again only as often as the count's own cost allows
    (`Agent.ct_count_pacer`): at 10^5 entries one count is tens of ms of CPU, and the
    status is written every 2 s and read by every `cni-cilium status`."""
    with agent.ct_count_lock:
        now = time.monotonic()
        if agent.ct_count_pacer.due(now):
            ct = PinnedMap(agent.maps["ct4"].path)   # this thread's own handle
            try:
                agent.ct_count = ct.count()
            finally:
                ct.close()
            agent.ct_count_pacer.ran(now, time.monotonic())
        return agent.ct_count


def datapath_stats(agent: Agent) -> dict[str, int]:
    """The datapath's counters and drop reasons, summed over CPUs."""
    stats = agent.maps["stats"]
    return {name: stats.percpu_sum_u64(index_key(i)) for i, name in enumerate(STAT_NAMES)}


def egress(agent: Agent) -> dict:
    """`/egress`: gateways (election, status), policies, this node's view of the agents."""
    with agent.lock:
        tr = agent.translation
        return {"node": agent.node_name, **agent.egress.summary(tr),
                "policies": [p.to_dict() for p in tr.egress.policies]
                if tr and tr.egress else []}


def services(agent: Agent) -> dict:
    """The frontends programmed on this node and their backends (with each least-conn
    backend's active connections and each maglev backend's table share)."""
    with agent.lock:
        tr = agent.translation
        frontends = list(tr.frontends) if tr else []
    return {"node": agent.node_name, "frontends": agent.lb.frontend_docs(frontends)}


def metrics_response(agent: Agent) -> api.Response:
    """`/metrics`: Prometheus text from the status and the datapath counters."""
    return 200, "text/plain; version=0.0.4", render_metrics(status(agent),
                                                            datapath_stats(agent)).encode()
