"""Parsing and validating CiliumClusterwideNetworkPolicy objects (pure).

Called by `cni_cilium.manifests` for the kind, with its problem collector: every fault is
one line naming the policy and the field ("CiliumClusterwideNetworkPolicy deny-ssh:
spec.ingress[0].fromEntities[1]: unknown entity 'wrld'; allowed: ..."). Fields this
datapath does not implement (L7 rules, FQDNs, ICMP, ...) are refused by name rather than
ignored: a policy is enforced as written or not at all.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Any, Mapping

from ..manifests import _LABEL_NAME, _LABEL_VALUE, _cidr, _Ctx, _list, _mapping, _meta
from .model import (
    API_VERSION,
    EGRESS,
    ENTITIES,
    INGRESS,
    PROTOCOLS,
    CidrRule,
    ClusterwideNetworkPolicy,
    LabelSelector,
    PolicyRule,
    PolicySpec,
    PortRule,
    Requirement,
)

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
SPEC_FIELDS = ("endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress",
               "egressDeny", "enableDefaultDeny", "description", "labels", "log")
UNSUPPORTED_PEERS = {
    INGRESS: ("fromRequires", "fromNodes", "fromGroups", "icmps", "authentication"),
    EGRESS: ("toRequires", "toNodes", "toGroups", "toServices", "toFQDNs", "icmps",
             "authentication"),
}
PEER_FIELDS = {
    INGRESS: ("fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet", "toPorts"),
    EGRESS: ("toEndpoints", "toEntities", "toCIDR", "toCIDRSet", "toPorts"),
}
UNSUPPORTED_PORT_RULE = ("rules", "serverNames", "listener", "originatingTLS",
                         "terminatingTLS")
SOURCES = ("k8s:", "any:")


def _unknown(ctx: _Ctx, raw: dict, path: str, known: tuple[str, ...],
             unsupported: tuple[str, ...] = ()) -> None:
    for key in raw:
        if key in unsupported:
            ctx.err(f"{path}.{key}", "not supported by this datapath")
        elif key not in known:
            ctx.err(f"{path}.{key}", f"unknown field; allowed: {', '.join(known)}")


def _selector_key(ctx: _Ctx, key: Any, path: str) -> str | None:
    if not isinstance(key, str) or not key:
        ctx.err(path, f"invalid label key {key!r}")
        return None
    for source in SOURCES:
        if key.startswith(source):
            key = key[len(source):]
    name = key[len("reserved:"):] if key.startswith("reserved:") else key.split("/")[-1]
    if not _LABEL_NAME.match(name):
        ctx.err(path, f"invalid label key {key!r}")
        return None
    return key


def _label_value(ctx: _Ctx, value: Any, path: str) -> str | None:
    if value is None:
        value = ""
    if not isinstance(value, str) or not _LABEL_VALUE.match(value):
        ctx.err(path, f"invalid label value {value!r}")
        return None
    return value


def parse_selector(ctx: _Ctx, raw: Any, path: str) -> LabelSelector | None:
    """A label selector ({} selects everything)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        ctx.err(path, f"expected a mapping, got {type(raw).__name__}")
        return None
    before = len(ctx.problems)
    _unknown(ctx, raw, path, ("matchLabels", "matchExpressions"))
    labels = []
    for key, value in _mapping(ctx, raw.get("matchLabels"), f"{path}.matchLabels").items():
        k = _selector_key(ctx, key, f"{path}.matchLabels.{key}")
        v = _label_value(ctx, value, f"{path}.matchLabels.{key}")
        if k is not None and v is not None:
            labels.append((k, v))
    requirements = []
    for i, expr in enumerate(_list(ctx, raw.get("matchExpressions"),
                                   f"{path}.matchExpressions")):
        epath = f"{path}.matchExpressions[{i}]"
        expr = _mapping(ctx, expr, epath)
        key = _selector_key(ctx, expr.get("key"), f"{epath}.key")
        operator = expr.get("operator")
        if operator not in OPERATORS:
            ctx.err(f"{epath}.operator", f"invalid operator {operator!r}; allowed: "
                    f"{', '.join(OPERATORS)}")
            continue
        values = [_label_value(ctx, v, f"{epath}.values[{j}]")
                  for j, v in enumerate(_list(ctx, expr.get("values"), f"{epath}.values"))]
        if operator in ("In", "NotIn") and not values:
            ctx.err(f"{epath}.values", f"required (non-empty) for operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            ctx.err(f"{epath}.values", f"must be empty for operator {operator}")
        if key is not None:
            requirements.append(Requirement(key, operator, tuple(v for v in values if v
                                                                 is not None)))
    if len(ctx.problems) != before:
        return None
    return LabelSelector(tuple(sorted(labels)), tuple(requirements))


def _port_number(ctx: _Ctx, value: Any, path: str) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, str):
        ctx.err(path, f"named port {value!r} is not supported; use a number 0-65535")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        ctx.err(path, f"invalid port {value!r}; must be 0-65535 (0: every port)")
        return None
    return value


def parse_ports(ctx: _Ctx, raw: Any, path: str) -> tuple[PortRule, ...]:
    """toPorts: a list of {ports: [{port, endPort, protocol}]}."""
    out: list[PortRule] = []
    for i, item in enumerate(_list(ctx, raw, path)):
        ipath = f"{path}[{i}]"
        item = _mapping(ctx, item, ipath)
        _unknown(ctx, item, ipath, ("ports",), UNSUPPORTED_PORT_RULE)
        ports = _list(ctx, item.get("ports"), f"{ipath}.ports")
        if not ports:
            ctx.err(f"{ipath}.ports", "at least one port is required")
        for j, port in enumerate(ports):
            ppath = f"{ipath}.ports[{j}]"
            port = _mapping(ctx, port, ppath)
            _unknown(ctx, port, ppath, ("port", "endPort", "protocol"))
            number = _port_number(ctx, port.get("port", 0), f"{ppath}.port")
            protocol = port.get("protocol", "ANY")
            if protocol not in PROTOCOLS:
                hint = " (SCTP is not supported by this datapath)" if protocol == "SCTP" else ""
                ctx.err(f"{ppath}.protocol", f"invalid protocol {protocol!r}; allowed: "
                        f"{', '.join(PROTOCOLS)}{hint}")
                protocol = None
            end = port.get("endPort")
            if end is not None:
                if isinstance(end, bool) or not isinstance(end, int) or not 1 <= end <= 65535:
                    ctx.err(f"{ppath}.endPort", f"invalid endPort {end!r}; must be 1-65535")
                    end = None
                elif number == 0:
                    ctx.err(f"{ppath}.endPort", "needs a non-zero port")
                    end = None
                elif number is not None and end < number:
                    ctx.err(f"{ppath}.endPort", f"endPort {end} is below port {number}")
                    end = None
            if number is not None and protocol is not None:
                out.append(PortRule(number, end if end != number else None, protocol))
    return tuple(out)


def _cidrs(ctx: _Ctx, raw: Any, path: str) -> list[CidrRule]:
    out = []
    for i, value in enumerate(_list(ctx, raw, path)):
        cidr = _cidr(ctx, value, f"{path}[{i}]")
        if cidr is not None:
            out.append(CidrRule(cidr))
    return out


def _cidr_sets(ctx: _Ctx, raw: Any, path: str) -> list[CidrRule]:
    out = []
    for i, item in enumerate(_list(ctx, raw, path)):
        ipath = f"{path}[{i}]"
        item = _mapping(ctx, item, ipath)
        _unknown(ctx, item, ipath, ("cidr", "except"), ("cidrGroupRef", "cidrGroupSelector"))
        cidr = _cidr(ctx, item.get("cidr"), f"{ipath}.cidr")
        excepts = []
        for j, value in enumerate(_list(ctx, item.get("except"), f"{ipath}.except")):
            sub = _cidr(ctx, value, f"{ipath}.except[{j}]")
            if sub is None or cidr is None:
                continue
            if not ipaddress.IPv4Network(sub).subnet_of(ipaddress.IPv4Network(cidr)):
                ctx.err(f"{ipath}.except[{j}]", f"{sub} is not inside cidr {cidr}")
                continue
            excepts.append(sub)
        if cidr is not None:
            out.append(CidrRule(cidr, tuple(excepts)))
    return out


def parse_rule(ctx: _Ctx, raw: Any, path: str, direction: str) -> PolicyRule | None:
    """One ingress/egress (or deny) entry."""
    before = len(ctx.problems)
    raw = _mapping(ctx, raw, path)
    prefix = "from" if direction == INGRESS else "to"
    _unknown(ctx, raw, path, PEER_FIELDS[direction], UNSUPPORTED_PEERS[direction])
    endpoints = []
    for i, sel in enumerate(_list(ctx, raw.get(f"{prefix}Endpoints"),
                                  f"{path}.{prefix}Endpoints")):
        parsed = parse_selector(ctx, sel, f"{path}.{prefix}Endpoints[{i}]")
        if parsed is not None:
            endpoints.append(parsed)
    entities = []
    for i, entity in enumerate(_list(ctx, raw.get(f"{prefix}Entities"),
                                     f"{path}.{prefix}Entities")):
        if entity not in ENTITIES:
            ctx.err(f"{path}.{prefix}Entities[{i}]", f"unknown entity {entity!r}; allowed: "
                    f"{', '.join(ENTITIES)}")
        else:
            entities.append(entity)
    cidrs = _cidrs(ctx, raw.get(f"{prefix}CIDR"), f"{path}.{prefix}CIDR")
    cidrs += _cidr_sets(ctx, raw.get(f"{prefix}CIDRSet"), f"{path}.{prefix}CIDRSet")
    ports = parse_ports(ctx, raw.get("toPorts"), f"{path}.toPorts")
    if len(ctx.problems) != before:
        return None
    return PolicyRule(tuple(endpoints), tuple(entities), tuple(cidrs), ports)


def _default_deny(ctx: _Ctx, raw: Any, path: str) -> tuple[bool | None, bool | None]:
    raw = _mapping(ctx, raw, path)
    _unknown(ctx, raw, path, ("ingress", "egress"))
    out = []
    for direction in ("ingress", "egress"):
        value = raw.get(direction)
        if value is not None and not isinstance(value, bool):
            ctx.err(f"{path}.{direction}", f"must be a boolean, got {value!r}")
            value = None
        out.append(value)
    return out[0], out[1]


def parse_spec(ctx: _Ctx, raw: Any, path: str) -> PolicySpec | None:
    before = len(ctx.problems)
    if not isinstance(raw, dict):
        ctx.err(path, f"expected a mapping, got {type(raw).__name__}")
        return None
    _unknown(ctx, raw, path, SPEC_FIELDS)
    has_endpoints, has_nodes = "endpointSelector" in raw, "nodeSelector" in raw
    if has_endpoints == has_nodes:
        ctx.err(path, "exactly one of endpointSelector (pods) and nodeSelector (the host "
                "firewall) is required" + ("; both are set" if has_endpoints else ""))
    endpoint_selector = node_selector = None
    if has_endpoints:
        endpoint_selector = parse_selector(ctx, raw["endpointSelector"],
                                           f"{path}.endpointSelector")
    if has_nodes:
        node_selector = parse_selector(ctx, raw["nodeSelector"], f"{path}.nodeSelector")
    sections = {}
    for name, direction in (("ingress", INGRESS), ("ingressDeny", INGRESS),
                            ("egress", EGRESS), ("egressDeny", EGRESS)):
        rules = [parse_rule(ctx, r, f"{path}.{name}[{i}]", direction)
                 for i, r in enumerate(_list(ctx, raw.get(name), f"{path}.{name}"))]
        sections[name] = tuple(r for r in rules if r is not None)
    default_deny = _default_deny(ctx, raw.get("enableDefaultDeny"), f"{path}.enableDefaultDeny")
    description = raw.get("description", "")
    if not isinstance(description, str):
        ctx.err(f"{path}.description", "must be a string")
    if len(ctx.problems) != before:
        return None
    return PolicySpec(path, endpoint_selector, node_selector, sections["ingress"],
                      sections["ingressDeny"], sections["egress"], sections["egressDeny"],
                      default_deny, str(description))


def policy_digest(doc: Mapping[str, Any]) -> str:
    """The version of a policy document: a digest of its `spec` and `specs` (pure). The
    agent reports it per policy, so a caller that replaced a policy can tell when the new
    version, not only the name, is in effect."""
    body = json.dumps({"spec": doc.get("spec"), "specs": doc.get("specs")}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def parse_clusterwide_policy(doc: dict, ctx: _Ctx) -> ClusterwideNetworkPolicy | None:
    """A CiliumClusterwideNetworkPolicy document, or None (the problems are in ctx)."""
    if doc.get("apiVersion") != API_VERSION:
        ctx.err("apiVersion", f"invalid value {doc.get('apiVersion')!r}; allowed: {API_VERSION}")
    _ns, name, labels, _ann = _meta(ctx, doc, namespaced=False)
    raw_specs: list[tuple[str, Any]] = []
    if doc.get("spec") is not None:
        raw_specs.append(("spec", doc["spec"]))
    for i, spec in enumerate(_list(ctx, doc.get("specs"), "specs")):
        raw_specs.append((f"specs[{i}]", spec))
    if not raw_specs:
        ctx.err("spec", "required (or specs)")
    specs = [parse_spec(ctx, raw, path) for path, raw in raw_specs]
    if ctx.problems:
        return None
    return ClusterwideNetworkPolicy(name, tuple(s for s in specs if s is not None), labels,
                                    policy_digest(doc))
