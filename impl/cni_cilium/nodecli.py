"""Node commands of `cni-cilium`: status, wait-ready, service list, egress list, bpf ct list,
bpf remove, bpf cache key|build|list."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from typing import Callable

from . import api, paths
from .bpfabi import CT_KINDS, CtEntry, CtKey, EgressAction, EgressKey
from .datapath.bpfcache import origin_line

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _agent_json(path: str) -> dict | None:
    try:
        return api.get_json(path)
    except api.AgentUnreachable as exc:
        print(f"error: {exc} (is `cni-cilium agent` running on this node?)", file=sys.stderr)
        return None


def _agent_view(path: str, args: argparse.Namespace, render: Callable[[dict], None]) -> int:
    """Fetch a document from the agent and print it as JSON or through `render`."""
    doc = _agent_json(path)
    if doc is None:
        return EXIT_FAIL
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        render(doc)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    return _agent_view("/status", args, print_status)


def cmd_service_list(args: argparse.Namespace) -> int:
    return _agent_view("/services", args, print_services)


def cmd_egress_list(args: argparse.Namespace) -> int:
    return _agent_view("/egress", args, print_egress)


def _gateway_line(gw: dict) -> str:
    status = gw["status"]
    cond = status["conditions"][0]
    return (f"{gw['name']:20} {gw['mode']:40} {gw['egressIP'] or '-':15} "
            f"{status['activeNodeName'] or '-':10} {','.join(status['readyNodes']) or '-':20} "
            f"{cond['status']}/{cond['reason']}")


def print_egress(doc: dict) -> None:
    print(f"{'GATEWAY':20} {'MODE':40} {'EGRESS IP':15} {'ACTIVE':10} {'READY NODES':20} "
          "READY")
    for gw in doc["gateways"]:
        print(_gateway_line(gw))
        for node, why in sorted(gw["notReadyNodes"].items()):
            print(f"  not eligible: {node}: {why}")
        if gw["moves"]:
            last = gw["lastMove"]
            print(f"  moves seen by this agent: {gw['moves']} (last {last['from'] or 'none'} -> "
                  f"{last['to'] or 'none'} at "
                  f"{time.strftime('%H:%M:%S', time.localtime(last['at']))})")
    print()
    print(f"{'POLICY':20} {'GATEWAY':20} {'DESTINATIONS':24} {'EXCLUDED':24} {'ENTRIES':>7} PODS")
    for pol in doc["policies"]:
        print(f"{pol['name']:20} {pol['egressGatewayName']:20} "
              f"{','.join(pol['destinationCIDRs']):24} "
              f"{','.join(pol['excludedCIDRs']) or '-':24} {pol['entries']:>7} "
              f"{len(pol['selectedPods'])}")
        for pod in pol["selectedPods"]:
            print(f"  {pod}")
    announcing = doc["announcing"]
    print()
    for vip, info in announcing["vips"].items():
        print(f"announcing {vip} on {', '.join(info['interfaces']) or '(no interface)'} "
              f"({', '.join(info['macs'])})")
    print(f"ARP replies {announcing['arpReplies']}, gratuitous ARP sent "
          f"{announcing['gratuitousArpSent']}, takeovers {announcing['takeovers']}")
    health = doc["health"]
    peers = ", ".join(f"{n} {'ready' if p['ready'] else 'NOT READY (' + p['reason'] + ')'}"
                      for n, p in health["peers"].items())
    print(f"agents (health port {health['port']}, "
          f"{'settled' if health['settled'] else 'first checks pending'}): {peers}")


def print_status(doc: dict) -> None:
    modes = doc["modes"]
    print(f"node {doc['node']}: {doc['state']} (pid {doc['pid']}, up {doc['uptimeSeconds']} s, "
          f"restarts {doc['restarts']}, self-heals {doc['selfHeals']}, reboot required: "
          f"{'yes' if doc['rebootRequired'] else 'no'})")
    lb = ", ".join(f"{p} {m}" for p, m in sorted(modes["lbMode"].items()))
    pending = modes.get("tunnelModePending")
    if pending:
        print(f"REBOOT REQUIRED: tunnelMode {pending} is configured; {modes['tunnelMode']} "
              "stays in effect until this node reboots")
    print(f"modes: tunnel {modes['tunnelMode']} (configured {modes['tunnelModeConfigured']}), "
          f"LB {lb} (configured {modes['lbModeConfigured']}), masquerade "
          f"{modes['masqueradeMode']}, node routes {'on' if modes['createNodeRoutes'] else 'off'}"
          f", kube-proxy replacement, algorithm {modes['lbAlgorithm']} by default")
    in_use = ", ".join(f"{name} {count}" for name, count in sorted(
        (modes.get("lbAlgorithms") or {}).items()))
    print(f"LB algorithms: extra ones {'on' if modes.get('extraLoadBalancerAlgorithms') else 'off'}"
          f", maglev table size {modes.get('maglevTableSize')}, frontends by algorithm: "
          f"{in_use or 'none'}")
    tunnel = doc.get("tunnel", {})
    if tunnel.get("device"):
        print(f"tunnel: VXLAN device {tunnel['device']}, UDP port {tunnel['port']}, VNI "
              f"{tunnel['vni']}, pod MTU {tunnel['podMTU']}, peers: " + (", ".join(
                  f"{cidr} via {ip}" for cidr, ip in sorted(tunnel["peers"].items())) or "none"))
    print(f"bpf: {origin_line(doc['bpf'])}, maps in {doc['bpf']['pinDir']}")
    print("programs:")
    for device, info in sorted(doc["devices"].items()):
        hooks = "  ".join(f"{d} {h['program']} {'ok' if h['ok'] else 'MISSING'}"
                          for d, h in sorted(info["attached"].items()))
        print(f"  {device:16} {hooks}")
    print("maps:")
    for name, m in sorted(doc["maps"].items()):
        print(f"  {name:14} {m['entries']:>8} / {m['capacity']:<8} {100 * m['fill']:.2f}%")
    print(f"endpoints: {len(doc['endpoints'])}")
    for ep in doc["endpoints"]:
        print(f"  {ep['pod']:30} {ep['ip']:15} {ep['device']:16} "
              f"{'ready' if ep['ready'] else 'NOT READY ' + ep['error']}")
    svc = doc["services"]
    print(f"services: {svc['services']} ({svc['frontends']} frontends), health-check ports: "
          f"{len(doc['healthChecks'])}")
    hp = doc.get("hostPorts", {})
    print(f"host ports: {hp.get('frontends', 0)} frontends, bound to "
          f"{', '.join(hp.get('defaultAddresses', [])) or '-'}"
          f"{' (all addresses)' if hp.get('allAddresses') else ''}")
    for gw in doc.get("egress", {}).get("gateways", []):
        print(f"egress gateway {_gateway_line(gw)}")
    if doc.get("lastSelfHeal"):
        last = doc["lastSelfHeal"]
        print(f"last self-heal: {last['device']} {last['direction']} {last['program']} at "
              f"{time.strftime('%H:%M:%S', time.localtime(last['at']))}")
    for line in doc["problems"]:
        print(f"problem: {line}")
    for line in doc["warnings"]:
        print(f"warning: {line}")


def _backend_text(fe: dict, b: dict) -> str:
    name = f"{b['address']}:{b['port']}"
    notes = [b["state"]] + (["local"] if b["local"] else [])
    active = fe.get("activeConnections") or {}
    if name in active:
        notes.append(f"{active[name]} active")
    table_shares = (fe.get("maglev") or {}).get("shares") or {}
    if name in table_shares:
        notes.append(f"{table_shares[name]} entries")
    return f"{name} ({', '.join(notes)})"


def print_services(doc: dict) -> None:
    """One line per frontend; then why an algorithm or LB mode is not the one asked for,
    and the source ranges of LoadBalancer frontends."""
    print(f"{'FRONTEND':24} {'TYPE':12} {'SERVICE':24} {'ALGORITHM':11} {'LB MODE':8} "
          f"{'AFFINITY':16} BACKENDS")
    notes: list[str] = []
    for fe in doc["frontends"]:
        backends = ", ".join(_backend_text(fe, b) for b in fe["backends"]) or "(none)"
        etp = " [Local]" if fe["externalTrafficPolicy"] == "Local" else ""
        fallback = fe.get("lbModeFallback")
        mode = fe["lbMode"] + ("*" if fallback else "")
        note = f"* {fe['service']}: SNAT instead of DSR: {fallback}"
        if fallback and note not in notes:
            notes.append(note)
        reason = fe.get("algorithmReason")
        algorithm = fe["algorithm"] + ("*" if reason else "")
        note = (f"* {fe['service']}: lb-algorithm {fe.get('algorithmRequested')!r} not in "
                f"effect ({reason}); {fe['algorithm']} is used")
        if reason and note not in notes:
            notes.append(note)
        affinity = fe.get("sessionAffinity")
        affinity_text = f"ClientIP {affinity['timeoutSeconds']}s" if affinity else "-"
        print(f"{fe['frontend']:24} {fe['type']:12} {fe['service'] + etp:24} "
              f"{algorithm:11} {mode:8} {affinity_text:16} {backends}")
        if fe.get("sourceRanges"):
            notes.append(f"  {fe['frontend']} source ranges {', '.join(fe['sourceRanges'])}: "
                         f"{fe.get('sourceRangeCheck')}")
    for line in notes:
        print(line)


def ct_rows(items, now: float) -> list[dict]:
    """Decoded conntrack/NAT entries, oldest first, for printing."""
    rows = []
    for raw_key, raw_value in items:
        key, entry = CtKey.decode(raw_key), CtEntry.decode(raw_value)
        rows.append({
            "kind": CT_KINDS.get(key.kind, str(key.kind)), "protocol": key.proto,
            "source": f"{key.saddr}:{key.sport}", "destination": f"{key.daddr}:{key.dport}",
            "nat": f"{entry.nat_addr}:{entry.nat_port}", "flags": entry.flag_names(),
            "expiresIn": int(entry.expires - now), "ageSeconds": int(now - entry.created),
            "packets": entry.packets, "bytes": entry.bytes})
    rows.sort(key=lambda r: (-r["ageSeconds"], r["kind"], r["source"]))
    return rows


_NAT_LABEL = {"service": "backend", "reply": "frontend", "nat-out": "to", "nat-in": "orig"}


def cmd_bpf_ct_list(args: argparse.Namespace) -> int:
    from .datapath.bpfsys import BpfError, PinnedMap
    from .datapath.loader import LoadError, current_pin_dir

    try:
        pin_dir = args.pin_dir or current_pin_dir()
        with PinnedMap(os.path.join(pin_dir, "ct4")) as ct:
            rows = ct_rows(ct.items(), time.monotonic())
    except (LoadError, BpfError, OSError) as exc:
        print(f"error: cannot read the conntrack map: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not args.all:
        rows = [r for r in rows if r["expiresIn"] >= 0]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for r in rows:
        # policy-in/out entries translate nothing: they say the connection was allowed
        nat = (f"{_NAT_LABEL[r['kind']]}={r['nat']}" if r["kind"] in _NAT_LABEL
               else "allowed")
        print(f"{r['protocol']} {r['source']:21} -> {r['destination']:21} {r['kind']:8} "
              f"{nat:30} expires={r['expiresIn']}s "
              f"packets={r['packets']} bytes={r['bytes']} flags={','.join(r['flags']) or '-'}")
    print(f"{len(rows)} entries", file=sys.stderr)
    return EXIT_OK


def egress_rows(items) -> list[dict]:
    """Decoded egress_policy entries, by pod then destination."""
    rows = []
    for raw_key, raw_value in items:
        key, action = EgressKey.decode(raw_key), EgressAction.decode(raw_value)
        row = {"pod": key.pod, "destination": key.destination, "action": action.name}
        if action.name == "snat":
            row["egressIP"] = action.egress_ip
        if action.name == "redirect":
            row.update(gateway=action.gateway_ip, gatewayMAC=action.gateway_mac)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["pod"], r["destination"]))


def cmd_bpf_egress_list(args: argparse.Namespace) -> int:
    from .datapath.bpfsys import BpfError, PinnedMap
    from .datapath.loader import LoadError, current_pin_dir

    try:
        pin_dir = args.pin_dir or current_pin_dir()
        with PinnedMap(os.path.join(pin_dir, "egress_policy")) as egress:
            rows = egress_rows(egress.items())
    except (LoadError, BpfError, OSError) as exc:
        print(f"error: cannot read the egress_policy map: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for r in rows:
        target = {"snat": f"source {r.get('egressIP')}",
                  "redirect": f"via {r.get('gateway')} ({r.get('gatewayMAC')})"}.get(
                      r["action"], "")
        print(f"{r['pod']:15} -> {r['destination']:18} {r['action']:10} {target}")
    print(f"{len(rows)} entries", file=sys.stderr)
    return EXIT_OK


def _agent_running() -> int | None:
    try:
        with open(paths.AGENT_PID, encoding="ascii") as fh:
            pid = int(fh.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cmd_bpf_remove(args: argparse.Namespace) -> int:
    """Take the datapath out: filters, owned routes, pinned maps (for uninstall and tests)."""
    from .datapath import links, routes, tc, vxlan

    pid = _agent_running()
    if pid is not None and not args.force:
        print(f"error: the agent (pid {pid}) is running; stop it first or pass --force",
              file=sys.stderr)
        return EXIT_USAGE
    removed = []
    with links.open_netlink() as ipr:
        for index, name in links.all_links(ipr):
            for direction in (tc.INGRESS, tc.EGRESS):
                if tc.detach(ipr, index, direction):
                    removed.append(f"{name} {direction}")
        for cidr in routes.owned_routes(ipr):
            routes.delete(ipr, cidr)
            removed.append(f"route {cidr}")
        if vxlan.remove_device(ipr):
            removed.append("device cilium_vxlan")
    if os.path.isdir(paths.PIN_DIR):
        shutil.rmtree(paths.PIN_DIR, ignore_errors=True)
        removed.append(f"maps {paths.PIN_DIR}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.AGENT_STATUS)
    print("removed: " + (", ".join(removed) if removed else "nothing"))
    return EXIT_OK


def _node_cache(args: argparse.Namespace):
    from .datapath import compilecache

    if args.cache_dir:
        return compilecache.CompileCache(args.cache_dir)
    cache = compilecache.cache_from_env()
    if cache is None:
        print(f"error: the compile cache is off (${compilecache.CACHE_ENV}="
              f"{os.environ.get(compilecache.CACHE_ENV)}); pass --cache-dir", file=sys.stderr)
    return cache


def _print_json_or(args: argparse.Namespace, doc: dict, text: str) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else text)


def cmd_bpf_cache_key(args: argparse.Namespace) -> int:
    """This node's compile cache key for the installed sources (nothing is compiled)."""
    from .datapath import loader

    cache = _node_cache(args)
    if cache is None:
        return EXIT_USAGE
    try:
        key, inputs = loader.prepare_key(loader.find_bpf_dir(args.bpf_dir), cache)
    except (loader.LoadError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    _print_json_or(args, {"key": key, "file": cache.path_for(key), "inputs": inputs},
                   f"{key} {cache.path_for(key)}")
    return EXIT_OK


def cmd_bpf_cache_build(args: argparse.Namespace) -> int:
    """Make sure the cache holds this node's compile (compiling in a private bpffs)."""
    from .datapath import loader

    cache = _node_cache(args)
    if cache is None:
        return EXIT_USAGE
    started = time.monotonic()
    try:
        outcome = loader.build_cache(loader.find_bpf_dir(args.bpf_dir), cache)
    except (loader.LoadError, OSError, ValueError) as exc:
        _print_json_or(args, {"result": "failed", "reason": str(exc)}, f"error: {exc}")
        return EXIT_FAIL
    doc = dict(outcome.to_dict(), seconds=round(time.monotonic() - started, 3))
    _print_json_or(args, doc, f"{outcome.result}: {outcome.file}"
                   + (f" ({outcome.reason})" if outcome.reason else ""))
    return EXIT_OK if outcome.result in ("present", "stored") else EXIT_FAIL


def cmd_bpf_cache_list(args: argparse.Namespace) -> int:
    """The entries in the cache directory (invalid ones with the reason)."""
    cache = _node_cache(args)
    if cache is None:
        return EXIT_USAGE
    rows = cache.entries()
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    for row in rows:
        if "invalid" in row:
            print(f"{row['key']}  INVALID: {row['invalid']}")
            continue
        insns = sum(p["insns"] for p in row["programs"].values())
        print(f"{row['key']}  kernel {row['kernelRelease']}, bcc {row['bcc']}, "
              f"{len(row['programs'])} programs ({insns} insns), compiled on {row['node']} "
              f"in {row['compileSeconds']} s")
    print(f"{len(rows)} entries in {cache.directory}", file=sys.stderr)
    return EXIT_OK


def cmd_wait_ready(args: argparse.Namespace) -> int:
    """Exit 0 once the agent runs, 1 with the reason when its start failed or timed out."""
    from . import readiness

    if args.timeout < 0:
        print(f"error: --timeout {args.timeout}: must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    seen = readiness.wait(args.since, args.timeout)
    if args.json:
        print(json.dumps({"state": seen.state, "reason": seen.reason}, sort_keys=True))
    else:
        print(seen.state + (f": {seen.reason}" if seen.reason else ""))
    return EXIT_OK if seen.state == readiness.RUNNING else EXIT_FAIL


def register(sub) -> None:
    """Add the node commands to `cni-cilium`'s subcommand parser."""
    status = sub.add_parser("status", help="the agent's state on this node")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    status.set_defaults(func=cmd_status)

    ready = sub.add_parser(
        "wait-ready", help="wait until the agent runs; fail with the reason its start failed")
    ready.add_argument("--since", type=float, default=0.0, metavar="EPOCH",
                       help="ignore start errors recorded before this time (default: none)")
    ready.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                       help="give up after this long (default 180)")
    ready.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ready.set_defaults(func=cmd_wait_ready)

    service = sub.add_parser("service", help="services as programmed on this node")
    service_sub = service.add_subparsers(dest="service_command", metavar="SUBCOMMAND")
    service_sub.required = True
    service_list = service_sub.add_parser(
        "list", help="frontends, types, backends with state, algorithm, LB mode")
    service_list.add_argument("--json", action="store_true", help="print machine-readable JSON")
    service_list.set_defaults(func=cmd_service_list)

    egress = sub.add_parser("egress", help="egress gateways as this node's agent sees them")
    egress_sub = egress.add_subparsers(dest="egress_command", metavar="SUBCOMMAND")
    egress_sub.required = True
    egress_list = egress_sub.add_parser(
        "list", help="gateways (active node, ready nodes, egress IP, Ready condition), "
        "policies with their selected pods, announced VIPs, the other agents' health")
    egress_list.add_argument("--json", action="store_true", help="print machine-readable JSON")
    egress_list.set_defaults(func=cmd_egress_list)

    bpf = sub.add_parser("bpf", help="the datapath's BPF state on this node")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", metavar="SUBCOMMAND")
    bpf_sub.required = True
    ct = bpf_sub.add_parser("ct", help="connection tracking and NAT entries")
    ct_sub = ct.add_subparsers(dest="ct_command", metavar="SUBCOMMAND")
    ct_sub.required = True
    ct_list = ct_sub.add_parser("list", help="list conntrack/NAT entries (reads the pinned map)")
    ct_list.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ct_list.add_argument("--all", action="store_true", help="include expired entries")
    ct_list.add_argument("--pin-dir", help="map directory (default: the installed layout's)")
    ct_list.set_defaults(func=cmd_bpf_ct_list)
    egress_map = bpf_sub.add_parser("egress", help="egress gateway entries")
    egress_map_sub = egress_map.add_subparsers(dest="egress_map_command", metavar="SUBCOMMAND")
    egress_map_sub.required = True
    egress_map_list = egress_map_sub.add_parser(
        "list", help="(pod, destination) -> snat / redirect / excluded / no-gateway (reads the "
        "pinned map)")
    egress_map_list.add_argument("--json", action="store_true",
                                 help="print machine-readable JSON")
    egress_map_list.add_argument("--pin-dir", help="map directory (default: the installed "
                                 "layout's)")
    egress_map_list.set_defaults(func=cmd_bpf_egress_list)
    remove = bpf_sub.add_parser(
        "remove", help="detach every program, delete the agent's routes and pinned maps")
    remove.add_argument("--force", action="store_true", help="even while the agent runs")
    remove.set_defaults(func=cmd_bpf_remove)
    _register_cache(bpf_sub)


def _register_cache(bpf_sub) -> None:
    cache = bpf_sub.add_parser(
        "cache", help="the datapath compile cache (one compile per sources + kernel build)")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    cache_sub.required = True
    for name, func, help_text in (
            ("key", cmd_bpf_cache_key, "print this node's cache key and entry file"),
            ("build", cmd_bpf_cache_build, "compile into the cache unless it holds this "
             "node's key (in a private bpffs: a running agent's maps are not touched)"),
            ("list", cmd_bpf_cache_list, "list the entries (invalid ones with the reason)")):
        sub = cache_sub.add_parser(name, help=help_text)
        sub.add_argument("--json", action="store_true", help="print machine-readable JSON")
        sub.add_argument("--cache-dir", help="cache directory (default "
                         "$CNI_CILIUM_BPF_CACHE, else /var/cache/cni-cilium/bpf)")
        if name != "list":
            sub.add_argument("--bpf-dir", help="BPF sources (default: the installed ones)")
        sub.set_defaults(func=func)
