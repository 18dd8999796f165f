"""How every provider command says whether this host can run it (exit 3 when it cannot)."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..providers.base import EXIT_PROVIDER_UNAVAILABLE, Availability


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
    return 0 if available.ok else EXIT_PROVIDER_UNAVAILABLE


def refuse(label: str, available: Availability) -> int:
    """One line saying why a command cannot run here; exit status 3."""
    print(f"error: {label} cannot run here; {available.reason()}", file=sys.stderr)
    return EXIT_PROVIDER_UNAVAILABLE
