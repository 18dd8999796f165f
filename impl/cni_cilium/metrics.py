"""The agent's Prometheus text exposition (pure: status document + counters -> text)."""

from __future__ import annotations

from typing import Iterable, Mapping

PREFIX = "cni_cilium_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
        return f"{PREFIX}{name}{{{inner}}} {value:g}"
    return f"{PREFIX}{name} {value:g}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}", *samples]


def _egress_metrics(egress: Mapping) -> list[str]:
    gateways = egress.get("gateways", [])
    lines = _family("egress_gateway_active", "gauge",
                    "1 for each gateway's active node as this agent elected it.",
                    [_sample("egress_gateway_active", 1, {"gateway": g["name"],
                                                          "node": g["status"]["activeNodeName"]})
                     for g in gateways if g["status"]["activeNodeName"]])
    lines += _family("egress_gateway_ready_nodes", "gauge", "Eligible nodes per gateway.",
                     [_sample("egress_gateway_ready_nodes", len(g["status"]["readyNodes"]),
                              {"gateway": g["name"]}) for g in gateways])
    lines += _family("egress_gateway_ready", "gauge",
                     "1 when the gateway's Ready condition is True, by reason.",
                     [_sample("egress_gateway_ready",
                              int(g["status"]["conditions"][0]["status"] == "True"),
                              {"gateway": g["name"],
                               "reason": g["status"]["conditions"][0]["reason"]})
                      for g in gateways])
    lines += _family("egress_gateway_moves_total", "counter",
                     "Changes of the active node this agent has seen.",
                     [_sample("egress_gateway_moves_total", g.get("moves", 0),
                              {"gateway": g["name"]}) for g in gateways])
    lines += _family("egress_policy_entries", "gauge",
                     "egress_policy map entries on this node, by action.",
                     [_sample("egress_policy_entries", n, {"action": a})
                      for a, n in sorted(egress.get("entries", {}).items())])
    announcing = egress.get("announcing", {})
    lines += _family("egress_vip_announced", "gauge", "VIPs this node answers ARP for.",
                     [_sample("egress_vip_announced", 1, {"vip": vip})
                      for vip in sorted(announcing.get("vips", {}))])
    lines += _family("egress_arp_replies_total", "counter", "ARP replies sent for VIPs.",
                     [_sample("egress_arp_replies_total", announcing.get("arpReplies", 0))])
    lines += _family("egress_gratuitous_arp_total", "counter",
                     "Gratuitous ARP packets sent on VIP takeovers.",
                     [_sample("egress_gratuitous_arp_total",
                              announcing.get("gratuitousArpSent", 0))])
    peers = egress.get("health", {}).get("peers", {})
    lines += _family("agent_peer_ready", "gauge",
                     "1 when this agent sees a node's agent as ready (health port checks).",
                     [_sample("agent_peer_ready", int(p["ready"]), {"node": n})
                      for n, p in sorted(peers.items())])
    return lines


def render_metrics(status: Mapping, stats: Mapping[str, int]) -> str:
    """Metrics from the agent's status document and the datapath counters."""
    lines: list[str] = []
    lines += _family("agent_restarts_total", "counter",
                     "Agent restarts since the node booted.",
                     [_sample("agent_restarts_total", status.get("restarts", 0))])
    lines += _family("self_heal_total", "counter",
                     "tc attachments found missing and restored since the node booted.",
                     [_sample("self_heal_total", status.get("selfHeals", 0))])
    lines += _family("reboot_required", "gauge",
                     "1 when the configured tunnel mode differs from the one in effect.",
                     [_sample("reboot_required", int(bool(status.get("rebootRequired"))))])
    modes = status.get("modes", {})
    tunnel = [_sample("tunnel_mode", 1, {"mode": modes.get("tunnelMode", ""),
                                         "state": "in_effect"})]
    if modes.get("tunnelModePending"):
        tunnel.append(_sample("tunnel_mode", 1, {"mode": modes["tunnelModePending"],
                                                 "state": "pending_reboot"}))
    lines += _family("tunnel_mode", "gauge",
                     "The tunnel mode in effect since boot, and the one a reboot would apply.",
                     tunnel)
    bpf = status.get("bpf", {})
    lines += _family("bpf_compile_seconds", "gauge",
                     "Time clang (bcc) took to compile the programs at agent start "
                     "(0 when they came from the compile cache).",
                     [_sample("bpf_compile_seconds", bpf.get("compileSeconds", 0))])
    lines += _family("bpf_load_seconds", "gauge",
                     "Time loading the programs into the kernel took at agent start "
                     "(with the cache entry's maps when they came from the compile cache).",
                     [_sample("bpf_load_seconds", bpf.get("loadSeconds", 0))])
    lines += _family("bpf_datapath_origin", "gauge",
                     "1 for where this agent's programs came from: compile or cache.",
                     [_sample("bpf_datapath_origin", 1, {"origin": bpf.get("origin", "compile"),
                                                         "cache": bpf.get("cache", {}).get(
                                                             "result", "off")})])
    maps = status.get("maps", {})
    lines += _family("bpf_map_entries", "gauge", "Entries in each pinned map.",
                     [_sample("bpf_map_entries", m["entries"], {"map": name})
                      for name, m in sorted(maps.items())])
    lines += _family("bpf_map_capacity", "gauge", "Capacity of each pinned map.",
                     [_sample("bpf_map_capacity", m["capacity"], {"map": name})
                      for name, m in sorted(maps.items())])
    attach = []
    for device, info in sorted(status.get("devices", {}).items()):
        for direction, hook in sorted(info.get("attached", {}).items()):
            attach.append(_sample("program_attached", int(bool(hook.get("ok"))), {
                "device": device, "direction": direction, "program": hook.get("program", "")}))
    lines += _family("program_attached", "gauge",
                     "1 when the program is attached at its hook.", attach)
    lines += _family("endpoints", "gauge", "Pod endpoints on this node.",
                     [_sample("endpoints", len(status.get("endpoints", [])))])
    services = status.get("services", {})
    lines += _family("services", "gauge", "Services programmed.",
                     [_sample("services", services.get("services", 0))])
    lines += _family("service_frontends", "gauge", "Service frontends programmed.",
                     [_sample("service_frontends", services.get("frontends", 0))])
    lines += _family("manifest_problems", "gauge", "Objects refused (invalid or conflicting).",
                     [_sample("manifest_problems", len(status.get("problems", [])))])
    lines += _family("host_port_frontends", "gauge", "hostPort frontends programmed.",
                     [_sample("host_port_frontends",
                              status.get("hostPorts", {}).get("frontends", 0))])
    lines += _egress_metrics(status.get("egress", {}))
    rec = status.get("reconcile", {})
    lines += _family("reconcile_total", "counter", "Reconciliations run.",
                     [_sample("reconcile_total", rec.get("count", 0))])
    lines += _family("reconcile_errors_total", "counter", "Reconciliations that failed.",
                     [_sample("reconcile_errors_total", rec.get("errors", 0))])
    policy = status.get("policy", {})
    lines += _family("policy_audit_mode", "gauge",
                     "1 when policyAuditMode is on: verdicts that would drop are AUDIT.",
                     [_sample("policy_audit_mode", int(bool(policy.get("auditMode"))))])
    lines += _family("policies", "gauge", "CiliumClusterwideNetworkPolicies in effect.",
                     [_sample("policies", len(policy.get("policies", [])))])
    lines += _family("policy_identities", "gauge", "Security identities this node knows.",
                     [_sample("policy_identities", policy.get("identities", 0))])
    lines += _family("policy_entries", "gauge", "Verdict entries in the policy map.",
                     [_sample("policy_entries", policy.get("entries", 0))])
    lines += _family("flows_seen_total", "counter", "Flow events the agent has read.",
                     [_sample("flows_seen_total", policy.get("flows", {}).get("seen", 0))])
    drops = {k: v for k, v in stats.items() if k.startswith("drop_")}
    events = {k: v for k, v in stats.items() if not k.startswith("drop_")}
    lines += _family("datapath_events_total", "counter",
                     "Translations done by the datapath, by kind.",
                     [_sample("datapath_events_total", v, {"event": k})
                      for k, v in sorted(events.items())])
    lines += _family("datapath_drops_total", "counter", "Packets dropped, by reason.",
                     [_sample("datapath_drops_total", v, {"reason": k[len("drop_"):]})
                      for k, v in sorted(drops.items())])
    return "\n".join(lines) + "\n"
