"""Module configuration: the ModuleConfig settings, their validation and derived values.

Pure logic: no I/O beyond parsing a YAML text handed in. Every problem is reported with
the field, the value seen and what is allowed, so `cni-cilium config validate` can print
one line per problem and a bad file never replaces a good running configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

TUNNEL_MODES = ("Disabled", "VXLAN")
LB_MODES = ("SNAT", "Hybrid", "DSR")
MASQUERADE_MODES = ("BPF", "Netfilter")
LB_ALGORITHMS = ("random", "maglev", "least-conn")
LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"


class ConfigError(ValueError):
    """Raised when a configuration cannot be used; `problems` holds one line per fault."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Parameter:
    """One ModuleConfig setting: its YAML name, kind and default."""

    name: str
    kind: str  # "enum", "bool", "str-list"
    default: Any
    choices: tuple[str, ...] = ()
    doc: str = ""

    def describe_allowed(self) -> str:
        if self.kind == "enum":
            return ", ".join(self.choices)
        if self.kind == "bool":
            return "true, false"
        return "a list of regular expressions"


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("tunnelMode", "enum", "Disabled", TUNNEL_MODES,
              "Disabled = native routing; VXLAN = overlay. A change needs a reboot of every node."),
    Parameter("bpfLBMode", "enum", "Hybrid", LB_MODES,
              "NodePort/LoadBalancer handling; Hybrid = TCP by DSR, UDP by SNAT."),
    Parameter("policyAuditMode", "bool", False, doc="Log policy verdicts, drop nothing."),
    Parameter("extraLoadBalancerAlgorithmsEnabled", "bool", False,
              doc=f"Honour the {LB_ALGORITHM_ANNOTATION} annotation; needs kernel >= 5.15."),
    Parameter("createNodeRoutes", "bool", None,
              doc="Routes to other nodes' pod CIDRs; defaults to true in native routing."),
    Parameter("masqueradeMode", "enum", "BPF", MASQUERADE_MODES, "Pod-to-world source NAT."),
    Parameter("svcSourceRangeCheck", "bool", False, doc="Honour loadBalancerSourceRanges."),
    Parameter("debugLogging", "bool", False, doc="Verbose agent logging."),
    Parameter("labelsRegex", "str-list", None, doc="Labels that count for identities."),
    Parameter("hostPortAllAddresses", "bool", False,
              doc="Bind hostPort on every node address instead of one (a private one "
                  "preferred)."),
)
PARAMETERS_BY_NAME = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class Settings:
    """Validated settings plus the values derived from them."""

    tunnelMode: str = "Disabled"
    bpfLBMode: str = "Hybrid"
    policyAuditMode: bool = False
    extraLoadBalancerAlgorithmsEnabled: bool = False
    createNodeRoutes: bool | None = None
    masqueradeMode: str = "BPF"
    svcSourceRangeCheck: bool = False
    debugLogging: bool = False
    labelsRegex: tuple[str, ...] | None = None
    hostPortAllAddresses: bool = False
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def effective_lb_mode(self) -> str:
        """The LB mode the datapath runs: VXLAN forces SNAT (DSR needs native routing)."""
        return "SNAT" if self.tunnelMode == "VXLAN" else self.bpfLBMode

    @property
    def effective_create_node_routes(self) -> bool:
        """Explicit value wins; otherwise native routing needs node routes and VXLAN does not."""
        if self.createNodeRoutes is not None:
            return self.createNodeRoutes
        return self.tunnelMode == "Disabled"

    def lb_mode_for(self, protocol: str) -> str:
        """SNAT or DSR for one L4 protocol ("TCP"/"UDP") under the effective LB mode."""
        mode = self.effective_lb_mode
        if mode == "Hybrid":
            return "DSR" if protocol.upper() == "TCP" else "SNAT"
        return mode

    def as_settings(self) -> dict[str, Any]:
        """The given settings, as they would appear under spec.settings (defaults filled)."""
        out: dict[str, Any] = {}
        for p in PARAMETERS:
            value = getattr(self, p.name)
            if value is None:
                continue
            out[p.name] = list(value) if isinstance(value, tuple) else value
        return out

    def effective(self) -> dict[str, Any]:
        """Settings plus derived values, for `config validate` and the agent's status."""
        return {
            "settings": self.as_settings(),
            "effective": {
                "lbMode": self.effective_lb_mode,
                "lbModeTCP": self.lb_mode_for("TCP"),
                "lbModeUDP": self.lb_mode_for("UDP"),
                "createNodeRoutes": self.effective_create_node_routes,
                "tunnelMode": self.tunnelMode,
            },
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(self.effective(), indent=2, sort_keys=True)


def _fmt(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _check_enum(p: Parameter, value: Any) -> list[str]:
    if not isinstance(value, str) or value not in p.choices:
        return [f"{p.name}: invalid value {_fmt(value)}; allowed: {p.describe_allowed()}"]
    return []


def _check_bool(p: Parameter, value: Any) -> list[str]:
    if not isinstance(value, bool):
        kind = type(value).__name__
        return [f"{p.name}: invalid value {_fmt(value)} ({kind}); allowed: {p.describe_allowed()}"
                " (a YAML boolean, not a string)"]
    return []


def _check_str_list(p: Parameter, value: Any) -> list[str]:
    if not isinstance(value, list):
        return [f"{p.name}: invalid value {_fmt(value)}; allowed: {p.describe_allowed()}"]
    problems = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(f"{p.name}[{i}]: invalid value {_fmt(item)}; must be a string")
            continue
        try:
            re.compile(item)
        except re.error as exc:
            problems.append(f"{p.name}[{i}]: invalid regular expression {item!r}: {exc}")
    return problems


_CHECKS: dict[str, Callable[[Parameter, Any], list[str]]] = {
    "enum": _check_enum,
    "bool": _check_bool,
    "str-list": _check_str_list,
}


def settings_from_mapping(raw: Any) -> Settings:
    """Validate a plain settings mapping; raises ConfigError listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"settings: expected a mapping, got {type(raw).__name__}"])
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        p = PARAMETERS_BY_NAME.get(key)
        if p is None:
            problems.append(
                f"{key}: unknown setting; known settings: {', '.join(PARAMETERS_BY_NAME)}")
            continue
        errors = _CHECKS[p.kind](p, value)
        problems.extend(errors)
        if not errors:
            values[key] = tuple(value) if p.kind == "str-list" else value
    if problems:
        raise ConfigError(problems)
    warnings: list[str] = []
    if values.get("tunnelMode") == "VXLAN" and values.get("bpfLBMode", "Hybrid") != "SNAT":
        warnings.append(
            f"bpfLBMode: {values.get('bpfLBMode', 'Hybrid')} is not available with "
            "tunnelMode: VXLAN; the effective LB mode is SNAT")
    return Settings(**values, warnings=tuple(warnings))


def settings_from_document(doc: Any) -> Settings:
    """Accept a Deckhouse ModuleConfig (spec.settings) or a plain settings mapping."""
    if isinstance(doc, dict) and ("kind" in doc or "spec" in doc):
        problems = []
        kind = doc.get("kind")
        if kind is not None and kind != "ModuleConfig":
            problems.append(f"kind: invalid value {_fmt(kind)}; allowed: ModuleConfig")
        spec = doc.get("spec")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            problems.append(f"spec: expected a mapping, got {type(spec).__name__}")
            spec = {}
        if problems:
            raise ConfigError(problems)
        return settings_from_mapping(spec.get("settings"))
    return settings_from_mapping(doc)


def load_settings(text: str, source: str = "<config>") -> Settings:
    """Parse YAML text into Settings; YAML syntax errors become a ConfigError too."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}".replace("\n", " ")]) from exc
    return settings_from_document(doc)


def load_settings_file(path: str) -> Settings:
    """Read and validate a configuration file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return load_settings(text, path)


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of settings with some values changed, validated again."""
    merged = settings.as_settings()
    merged.update(changes)
    return settings_from_mapping({k: v for k, v in merged.items() if v is not None})


def defaults() -> Settings:
    """Settings with every default."""
    return Settings()


__all__ = [
    "LB_ALGORITHMS",
    "LB_ALGORITHM_ANNOTATION",
    "LB_MODES",
    "PARAMETERS",
    "TUNNEL_MODES",
    "ConfigError",
    "Parameter",
    "Settings",
    "defaults",
    "load_settings",
    "load_settings_file",
    "replace",
    "settings_from_document",
    "settings_from_mapping",
]
