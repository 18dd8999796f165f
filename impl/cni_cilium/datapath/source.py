"""The BPF program as bcc compiles it (pure): one translation unit and its map ABI digest.

bcc rewrites map calls (`ct4.lookup(...)`) only in the main file it compiles, so the
`bpf/lib/*.h` headers are inlined into one text (each once, with `#line` directives so
compiler errors still name the original file and line).
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping

MAIN = "cni_cilium.c"
ABI_HEADER = "lib/maps.h"
PROGRAMS = ("from_container", "to_container", "from_netdev", "to_netdev", "from_host",
            "from_overlay")

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


class SourceError(ValueError):
    """The BPF sources are incomplete (a quoted include names no known file)."""


def bundle(sources: Mapping[str, str], main: str = MAIN) -> str:
    """Inline every quoted `#include` of `sources` (relative paths) into `main`."""
    seen: set[str] = set()
    out: list[str] = []

    def emit(name: str) -> None:
        seen.add(name)
        out.append(f'#line 1 "{name}"')
        for number, line in enumerate(sources[name].splitlines(), 1):
            match = _INCLUDE.match(line)
            if not match:
                out.append(line)
                continue
            target = match.group(1)
            if target not in sources:
                raise SourceError(f"{name}:{number}: includes unknown file {target!r}")
            if target not in seen:
                emit(target)
            out.append(f'#line {number + 1} "{name}"')

    if main not in sources:
        raise SourceError(f"missing main program file {main!r}")
    emit(main)
    return "\n".join(out) + "\n"


def abi_digest(sources: Mapping[str, str]) -> str:
    """12 hex digits naming the map layout: maps pinned under it are reused only by programs
    compiled from the same `maps.h`."""
    if ABI_HEADER not in sources:
        raise SourceError(f"missing map definitions {ABI_HEADER!r}")
    return hashlib.sha256(sources[ABI_HEADER].encode()).hexdigest()[:12]
