"""What every command module shares: the one error type, the exit statuses, provider checks.

A handler returns its exit status or raises `CliError(message, exit_code)`; `main` prints
the message on stderr (`error: ...`, one line per problem) and exits with the code. Exit
statuses (docs/architecture.md): 0 ok, 1 failed check, 2 bad input, 3 provider unavailable.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from ..providers.base import EXIT_PROVIDER_UNAVAILABLE, Availability

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A command failed in a way it can say in a line (or one line per problem)."""

    def __init__(self, message: str | Sequence[str], exit_code: int = EXIT_FAIL):
        self.lines = [message] if isinstance(message, str) else list(message)
        self.exit_code = exit_code
        super().__init__("; ".join(self.lines))


def usage_error(message: str | Sequence[str]) -> CliError:
    """Bad input (exit 2)."""
    return CliError(message, EXIT_USAGE)


def unavailable(label: str, available: Availability) -> CliError:
    """This host cannot run the provider (exit 3), with what it lacks."""
    return CliError(f"{label} cannot run here; {available.reason()}", EXIT_PROVIDER_UNAVAILABLE)


def print_check(label: str, available: Availability, as_json: bool,
                details: dict[str, Any] | None = None, ok_message: str = "") -> int:
    """Print a `check` result (stdout when ok, stderr when not); returns the exit status."""
    if as_json:
        print(json.dumps({"provider": label, **(details or {}), "ok": available.ok,
                          "missing": list(available.missing)}, indent=2))
    elif available.ok:
        print(ok_message or f"{label}: this host can run it")
    else:
        print(f"{label} cannot run here; missing:", file=sys.stderr)
        for item in available.missing:
            print(f"  - {item}", file=sys.stderr)
    return EXIT_OK if available.ok else EXIT_PROVIDER_UNAVAILABLE
