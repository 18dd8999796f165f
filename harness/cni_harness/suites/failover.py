"""Figures from a request loop run across a failover (pure).

A pod makes one request every fraction of a second (`tools/probe.py loop`: one JSON line per
request with its start and end, wall clock, and the server's answer or an error) while the
test stops or reboots the active egress gateway node. `failover_figures` says, relative to
the moment the node was taken down: when the first request through the new gateway
succeeded, how long requests failed in a row, how many failed, and how the requests that
started in each phase went. Figures for the report, never timed assertions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Phase:
    """Requests that started in [begin, end)."""

    name: str
    begin: float
    end: float


def parse_loop(text: str) -> list[dict]:
    """The loop's JSON lines (a line cut short by the loop's end is left out)."""
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "start" in doc:
            out.append(doc)
    return out


def _ok(line: Mapping) -> bool:
    return "error" not in line


def failover_figures(lines: Sequence[Mapping], event_at: float,
                     through_new: Callable[[Mapping], bool],
                     phases: Iterable[Phase] = ()) -> dict:
    """Figures for one failover (seconds relative to `event_at`, rounded to 0.01 s).

    - `switchedAfter`: end of the first successful request through the new gateway
      (`through_new`) that started after the event; None when none did;
    - `longestOutage`: the longest run of consecutive failed requests after the event, from
      the first one's start to the next success's end (0 when nothing failed);
    - `failed` / `requests` after the event; per phase: requests, failures, the peers seen.
    """
    after = [line for line in lines if line["start"] >= event_at]
    first_new = next((line for line in after if _ok(line) and through_new(line)), None)
    outage, run_start = 0.0, None
    for line in after:
        if not _ok(line):
            run_start = line["start"] if run_start is None else run_start
        elif run_start is not None:
            outage = max(outage, line["end"] - run_start)
            run_start = None
    if run_start is not None:                    # still failing when the loop ended
        outage = max(outage, after[-1]["end"] - run_start)
    summary = {
        "requests": len(after),
        "failed": sum(1 for line in after if not _ok(line)),
        "switchedAfter": round(first_new["end"] - event_at, 2) if first_new else None,
        "longestOutage": round(outage, 2),
        "stillFailingAtEnd": run_start is not None,
    }
    for phase in phases:
        inside = [line for line in lines if phase.begin <= line["start"] < phase.end]
        summary[phase.name] = {
            "requests": len(inside),
            "failed": sum(1 for line in inside if not _ok(line)),
            "peers": sorted({line["peer"] for line in inside if _ok(line)}),
            "errors": sorted({line["error"] for line in inside if not _ok(line)})[:3],
        }
    return summary
