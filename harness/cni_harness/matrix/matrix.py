"""matrix.yaml: loading, schema check, and the expected preflight verdicts (pure)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import PROJECT_ROOT

DEFAULT_MATRIX = os.path.join(PROJECT_ROOT, "matrix.yaml")
VERDICTS = ("supported", "unsupported")
VAGRANT_PROVIDERS = ("libvirt", "virtualbox")

_EXPECT = {
    "type": "object",
    "additionalProperties": {"enum": list(VERDICTS)},
    "minProperties": 1,
}
_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9.-]*$"}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "profiles", "os_entries", "kernel_entries"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": 1},
        "profiles": {"type": "object", "additionalProperties": {"type": "object"},
                     "required": ["default"]},
        "os_entries": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "os_release", "boxes", "kernel", "expect"],
                "additionalProperties": False,
                "properties": {
                    "name": _NAME,
                    "os_release": {
                        "type": "object", "required": ["ID", "VERSION_ID"],
                        "additionalProperties": {"type": "string"},
                    },
                    "boxes": {
                        "type": "object", "required": list(VAGRANT_PROVIDERS),
                        "additionalProperties": False,
                        "properties": {p: {"type": "string", "minLength": 1}
                                       for p in VAGRANT_PROVIDERS},
                    },
                    "kernel": {
                        "type": "object", "required": ["source", "package", "release"],
                        "additionalProperties": False,
                        "properties": {
                            "source": {"enum": ["stock", "hwe", "elrepo"]},
                            "package": {"type": "string"},
                            "release": {"type": "string", "pattern": r"^\d+\.\d+"},
                        },
                    },
                    "nodes": {"type": "integer", "minimum": 1, "maximum": 10},
                    "expect": _EXPECT,
                },
            },
        },
        "kernel_entries": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "version", "source", "expect"],
                "additionalProperties": False,
                "properties": {
                    "name": _NAME,
                    "version": {"type": "string", "pattern": r"^(\d+\.\d+|host)$"},
                    "source": {
                        "type": "object", "required": ["suite", "package"],
                        "additionalProperties": False,
                        "properties": {"suite": {"type": "string"}, "package": {"type": "string"}},
                    },
                    "expect": _EXPECT,
                    # BPF features the kernel suite probes: helper name -> verdict.
                    "bpf_features": {
                        "type": "object",
                        "additionalProperties": {"enum": list(VERDICTS)},
                    },
                },
            },
        },
    },
}


class MatrixError(ValueError):
    """matrix.yaml does not follow its schema; `problems` has one line per fault."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class OsEntry:
    """A full machine: an OS release with a kernel, run as Vagrant VMs."""

    name: str
    os_release: dict[str, str]
    boxes: dict[str, str]
    kernel_source: str
    kernel_package: str
    kernel_release: str
    expect: dict[str, str]
    nodes: int = 3


@dataclass(frozen=True)
class KernelEntry:
    """A kernel booted by the qemu provider over this host's root filesystem."""

    name: str
    version: str
    suite: str
    package: str
    expect: dict[str, str]
    bpf_features: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Matrix:
    """The parsed matrix."""

    profiles: dict[str, dict[str, Any]]
    os_entries: tuple[OsEntry, ...]
    kernel_entries: tuple[KernelEntry, ...]
    path: str = field(default=DEFAULT_MATRIX, compare=False)

    def os_entry(self, name: str) -> OsEntry:
        return _by_name(self.os_entries, name, "OS entry")

    def kernel_entry(self, name_or_version: str) -> KernelEntry:
        """A kernel entry by name ('debian-5.10') or version ('5.10')."""
        for entry in self.kernel_entries:
            if name_or_version in (entry.name, entry.version):
                return entry
        known = ", ".join(e.name for e in self.kernel_entries)
        raise KeyError(f"no kernel entry {name_or_version!r}; known: {known}")

    def entry_for_kernel(self, release: str) -> KernelEntry | None:
        """The kernel entry a running kernel belongs to: by version prefix ('6.1' matches
        6.1.0-50-amd64 but not 6.12.x), else the `host` entry, else None."""
        for entry in self.kernel_entries:
            if entry.version != "host" and (release.startswith(entry.version + ".") or
                                            release.startswith(entry.version + "-")):
                return entry
        for entry in self.kernel_entries:
            if entry.version == "host":
                return entry
        return None


def _by_name(entries: tuple, name: str, what: str):
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries)
    raise KeyError(f"no {what} {name!r}; known: {known}")


def schema_problems(doc: Any) -> list[str]:
    """Every schema violation plus cross-field checks, one line each."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        problems.append(f"{where}: {err.message}")
    if problems:
        return problems
    profiles = set(doc["profiles"])
    for section in ("os_entries", "kernel_entries"):
        seen: set[str] = set()
        for i, entry in enumerate(doc[section]):
            if entry["name"] in seen:
                problems.append(f"{section}.{i}.name: duplicate entry {entry['name']!r}")
            seen.add(entry["name"])
            unknown = set(entry["expect"]) - profiles
            if unknown:
                problems.append(f"{section}.{i}.expect: unknown profiles {sorted(unknown)}; "
                                f"defined: {sorted(profiles)}")
    return problems


def parse_matrix(doc: Any, path: str = DEFAULT_MATRIX) -> Matrix:
    """Validate a loaded matrix document and build the Matrix."""
    problems = schema_problems(doc)
    if problems:
        raise MatrixError(problems)
    os_entries = tuple(
        OsEntry(name=e["name"], os_release=dict(e["os_release"]), boxes=dict(e["boxes"]),
                kernel_source=e["kernel"]["source"], kernel_package=e["kernel"]["package"],
                kernel_release=e["kernel"]["release"], expect=dict(e["expect"]),
                nodes=e.get("nodes", 3))
        for e in doc["os_entries"])
    kernel_entries = tuple(
        KernelEntry(name=e["name"], version=e["version"], suite=e["source"]["suite"],
                    package=e["source"]["package"], expect=dict(e["expect"]),
                    bpf_features=dict(e.get("bpf_features", {})))
        for e in doc["kernel_entries"])
    return Matrix(dict(doc["profiles"]), os_entries, kernel_entries, path)


def load_matrix(path: str = DEFAULT_MATRIX) -> Matrix:
    """Read and validate matrix.yaml."""
    with open(path, encoding="utf-8") as fh:
        try:
            doc = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise MatrixError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_matrix(doc, path)
