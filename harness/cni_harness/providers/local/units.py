"""The subset of systemd unit files that a namespace node's init (`nodeinit`) runs.

The install role writes one unit template for both kinds of node: systemd runs it on VMs,
nodeinit on namespace nodes. Pure: parses text, reports one problem per line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

RESTART_POLICIES = ("no", "on-failure", "always")
# Keys nodeinit acts on; anything else in [Service] is reported as ignored.
SERVICE_KEYS = ("Type", "ExecStart", "Environment", "WorkingDirectory", "Restart", "RestartSec",
                "StandardOutput", "StandardError", "RuntimeDirectory", "TimeoutStopSec")
SERVICE_TYPES = ("simple", "exec")


class UnitError(ValueError):
    """The unit cannot be run; `problems` has one line per fault."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Unit:
    name: str
    exec_start: tuple[str, ...]
    description: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    working_directory: str = "/"
    restart: str = "no"
    restart_sec: float = 1.0
    timeout_stop_sec: float = 5.0
    stdout_path: str | None = None   # None: nodeinit's own log for the unit
    stderr_path: str | None = None   # None: same as stdout
    runtime_directories: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def _sections(text: str, name: str, problems: list[str]) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    logical = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if logical:
            line = logical + " " + line
            logical = ""
        if line.endswith("\\"):
            logical = line[:-1].strip()
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        if current is None or "=" not in line:
            problems.append(f"{name}:{lineno}: expected [Section] or Key=Value, got {raw!r}")
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def _output(value: str, key: str, name: str, problems: list[str]) -> str | None:
    for prefix in ("append:", "file:"):
        if value.startswith(prefix):
            return value[len(prefix):]
    if value in ("journal", "inherit", "journal+console", ""):
        return None
    problems.append(f"{name}: {key}={value}: unsupported; use append:PATH, file:PATH or journal")
    return None


def _seconds(value: str, key: str, name: str, problems: list[str]) -> float:
    text = value[:-1] if value.endswith("s") else value
    try:
        return float(text)
    except ValueError:
        problems.append(f"{name}: {key}={value}: not a number of seconds")
        return 0.0


def parse_unit(text: str, name: str) -> Unit:
    """Parse a unit file's text; raises UnitError naming every problem."""
    problems: list[str] = []
    sections = _sections(text, name, problems)
    service = sections.get("Service")
    if service is None:
        raise UnitError([*problems, f"{name}: no [Service] section"])
    fields: dict = {"environment": {}, "runtime_directories": ()}
    ignored: list[str] = []
    exec_start: tuple[str, ...] = ()
    for key, value in service:
        if key == "ExecStart":
            if value[:1] in "-@+!:":
                problems.append(f"{name}: ExecStart prefix {value[0]!r} is not supported")
            try:
                exec_start = tuple(shlex.split(value))
            except ValueError as exc:
                problems.append(f"{name}: ExecStart: {exc}")
        elif key == "Type":
            if value not in SERVICE_TYPES:
                problems.append(f"{name}: Type={value}: allowed: {', '.join(SERVICE_TYPES)}")
        elif key == "Environment":
            for item in shlex.split(value):
                env_key, sep, env_value = item.partition("=")
                if not sep:
                    problems.append(f"{name}: Environment={item}: expected KEY=VALUE")
                    continue
                fields["environment"][env_key] = env_value
        elif key == "WorkingDirectory":
            fields["working_directory"] = value
        elif key == "Restart":
            if value not in RESTART_POLICIES:
                problems.append(f"{name}: Restart={value}: allowed: {', '.join(RESTART_POLICIES)}")
            else:
                fields["restart"] = value
        elif key == "RestartSec":
            fields["restart_sec"] = _seconds(value, key, name, problems)
        elif key == "TimeoutStopSec":
            fields["timeout_stop_sec"] = _seconds(value, key, name, problems)
        elif key == "StandardOutput":
            fields["stdout_path"] = _output(value, key, name, problems)
        elif key == "StandardError":
            fields["stderr_path"] = _output(value, key, name, problems)
        elif key == "RuntimeDirectory":
            fields["runtime_directories"] = tuple(value.split())
        else:
            ignored.append(key)
    if not exec_start:
        problems.append(f"{name}: ExecStart= is required")
    elif not exec_start[0].startswith("/"):
        problems.append(f"{name}: ExecStart must start with an absolute path, got "
                        f"{exec_start[0]!r}")
    if problems:
        raise UnitError(problems)
    description = dict(sections.get("Unit", [])).get("Description", "")
    return Unit(name=name, exec_start=exec_start, description=description,
                ignored=tuple(ignored), **fields)
