"""Policy commands of `cni-cilium`: observe (flows, like `hubble observe`), policy get,
identity list. They ask the node's agent over its unix-socket API."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from urllib.parse import urlencode

from . import api
from .nodecli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, _agent_json, _agent_view
from .policy.flows import VERDICTS, format_flow

FOLLOW_POLL_SECONDS = 0.25


def _query(args: argparse.Namespace) -> dict[str, str] | None:
    """The /flows query of the arguments; None (after saying why) when one is invalid."""
    query = {}
    for name in ("from_ip", "to_ip"):
        value = getattr(args, name)
        if value is None:
            continue
        try:
            query[name] = str(ipaddress.IPv4Network(value, strict=False))
        except ValueError:
            print(f"error: --{name.replace('_', '-')} {value!r}: not an IPv4 address or CIDR",
                  file=sys.stderr)
            return None
    if args.to_port is not None:
        if not 0 < args.to_port < 65536:
            print(f"error: --to-port {args.to_port}: must be 1-65535", file=sys.stderr)
            return None
        query["to_port"] = str(args.to_port)
    if args.last is not None and args.last < 1:
        print(f"error: --last {args.last}: must be >= 1", file=sys.stderr)
        return None
    for name in ("verdict", "protocol"):
        if getattr(args, name):
            query[name] = getattr(args, name)
    return query


def _print(flows: list[dict], as_json: bool) -> None:
    for flow in flows:
        print(json.dumps(flow, sort_keys=True) if as_json else format_flow(flow), flush=True)


def cmd_observe(args: argparse.Namespace) -> int:
    query = _query(args)
    if query is None:
        return EXIT_USAGE
    last = args.last or (None if args.follow else 20)
    doc = _agent_json("/flows?" + urlencode({**query, **({"last": last} if last else {})}))
    if doc is None:
        return EXIT_FAIL
    shown = doc["flows"] if (last or not args.follow) else []
    _print(shown, args.json)
    if not args.follow:
        return EXIT_OK
    since = doc["seen"]
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(FOLLOW_POLL_SECONDS)
            try:
                doc = api.get_json("/flows?" + urlencode({**query, "since": since}))
            except api.AgentUnreachable:
                continue                     # the agent restarts: follow its successor
            if doc["seen"] < since:          # a new agent numbers from 1 again
                since = 0
                continue
            _print(doc["flows"], args.json)
            since = doc["seen"]
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def print_policy(doc: dict) -> None:
    audit = "on (nothing is dropped; would-be drops are AUDIT)" if doc["auditMode"] else "off"
    print(f"policyAuditMode: {audit}")
    print(f"policies: {len(doc['policies'])}, identities: {doc['identities']}, "
          f"ipcache prefixes: {doc['ipcache']}, verdict entries: {doc['entries']}")
    for policy in doc["policies"]:
        selects = "; ".join(policy["selects"]) or "nothing on this node"
        print(f"  {policy['name']}: selects {selects}")
    print("subjects on this node:")
    for s in doc["subjects"]:
        enforced = [d for d in ("ingress", "egress") if s[f"{d}Enforced"]]
        print(f"  ID {s['identity']:<9} {', '.join(s['endpoints']):40} default deny: "
              f"{', '.join(enforced) or 'none':16} entries: {s['entries']:<5} "
              f"policies: {', '.join(s['policies']) or '-'}")
    for line in doc["problems"]:
        print(f"problem: {line}")
    for line in doc["warnings"]:
        print(f"warning: {line}")


def cmd_policy_get(args: argparse.Namespace) -> int:
    return _agent_view("/policy", args, print_policy)


def print_identities(doc: dict) -> None:
    print(f"{'ID':>9}  {'KIND':9} LABELS / ADDRESSES")
    for ident in doc["identities"]:
        where = ", ".join(ident["names"] or ident["addresses"][:4])
        print(f"{ident['identity']:>9}  {ident['kind']:9} {' '.join(ident['labels'])}"
              + (f"  <- {where}" if where else ""))


def cmd_identity_list(args: argparse.Namespace) -> int:
    return _agent_view("/identities", args, print_identities)


def register(sub) -> None:
    """Add the policy commands to `cni-cilium`'s subcommand parser."""
    observe = sub.add_parser(
        "observe", help="policy verdicts and drops of this node's datapath (like hubble "
        "observe)", description="Flows the datapath reported: source, destination, "
        "identities, ports, protocol, direction, verdict and reason. Exit 2 on bad "
        "arguments, 1 when no agent answers.")
    observe.add_argument("--verdict", choices=VERDICTS, help="only this verdict")
    observe.add_argument("--from-ip", metavar="CIDR", help="only flows from these addresses")
    observe.add_argument("--to-ip", metavar="CIDR", help="only flows to these addresses")
    observe.add_argument("--to-port", type=int, metavar="PORT",
                         help="only flows to this destination port")
    observe.add_argument("--protocol", choices=("TCP", "UDP"), help="only this protocol")
    observe.add_argument("--last", type=int, metavar="N",
                         help="the last N matching flows (default 20; with --follow: none)")
    observe.add_argument("--follow", "-f", action="store_true",
                         help="keep printing new flows (Ctrl-C ends)")
    observe.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                         help="with --follow: stop after this long (default: never)")
    observe.add_argument("--json", action="store_true", help="one JSON object per line")
    observe.set_defaults(func=cmd_observe)

    policy = sub.add_parser("policy", help="network policies in effect on this node")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    policy_sub.required = True
    get = policy_sub.add_parser("get", help="policies, what they select, default deny, rules")
    get.add_argument("--json", action="store_true", help="print machine-readable JSON")
    get.set_defaults(func=cmd_policy_get)

    identity = sub.add_parser("identity", help="security identities this node knows")
    identity_sub = identity.add_subparsers(dest="identity_command", metavar="SUBCOMMAND")
    identity_sub.required = True
    ident_list = identity_sub.add_parser("list", help="identities with labels and addresses")
    ident_list.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ident_list.set_defaults(func=cmd_identity_list)
