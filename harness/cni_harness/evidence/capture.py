"""Packet captures as evidence: tcpdump writing a pcap in a namespace, read back, decoded.

`Capture` (edge) runs tcpdump on every interface of one place (a node, the client, the
fabric) through a command runner, so it works wherever the runner reaches (a namespace, a
VM over ssh). `stop` ends it and brings the pcap back (base64 over the runner) with the
namespace's interface names, and `evidence.pcap` decodes it: the one capture path of the
suites.

Captures use `-i any` with the LINUX_SLL2 link type, so each packet carries the interface
index and the direction the kernel saw.
"""

from __future__ import annotations

import base64
import binascii
import os
import shlex
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .pcap import CaptureError, Packet, read_pcap

# Stops a capture that nobody stopped (a crashed test run): nothing is left running.
MAX_CAPTURE_SECONDS = 300
START_TIMEOUT = 10.0
SNAPLEN = 256                 # headers are all the judges read
_PCAP_MARK = "--pcap--"
# "2: eth0@if5: <...>" -> "2: eth0@if5": index and name of each link, wherever `ip` runs.
_LINKS = "ip -o link show 2>/dev/null | cut -d: -f1,2"

Runner = Callable[[Sequence[str]], "object"]   # argv -> CompletedProcess (stdout, returncode)


def parse_links(text: str) -> dict[int, str]:
    """{ifindex: name} from `ip -o link show | cut -d: -f1,2` lines (others are ignored)."""
    links = {}
    for line in text.splitlines():
        index, sep, name = line.partition(":")
        if sep and index.strip().isdigit() and name.strip():
            links[int(index)] = name.strip().split("@")[0]
    return links


@dataclass
class Capture:
    """tcpdump on every interface of one place, reachable through `run`."""

    label: str                          # e.g. "node1", "client", "fabric"
    run: Runner
    bpf_filter: str = ""
    path: str = field(default_factory=lambda: f"/tmp/cni-harness-cap-{uuid.uuid4().hex[:12]}")
    pid: int | None = None
    packets: list[Packet] = field(default_factory=list)
    pcap: bytes = b""                   # the capture file, kept as an evidence file
    interfaces: dict[int, str] = field(default_factory=dict)

    def start(self) -> Capture:
        """Start tcpdump and return once it listens (so no early packet is missed)."""
        pcap, err = shlex.quote(self.path + ".pcap"), shlex.quote(self.path + ".err")
        # --immediate-mode: packets reach the file at once, not when a ring block fills
        # (a stop would lose the block's packets). -B: no kernel-side drop in a burst.
        script = (f"timeout {MAX_CAPTURE_SECONDS} tcpdump -i any -y LINUX_SLL2 -nn -U "
                  f"-s {SNAPLEN} -B 4096 --immediate-mode -w {pcap} "
                  f"{shlex.quote(self.bpf_filter)} </dev/null >/dev/null 2>{err} & echo $!; "
                  f"{_LINKS}")
        res = self.run(["sh", "-c", script])
        first, _, links = res.stdout.partition("\n")
        try:
            self.pid = int(first.strip())
        except ValueError as exc:
            raise CaptureError(f"{self.label}: tcpdump did not start: {res.stdout!r} "
                               f"{getattr(res, 'stderr', '')!r}") from exc
        self.interfaces = parse_links(links)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            res = self.run(["cat", self.path + ".err"])
            if "listening on" in res.stdout:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise CaptureError(f"{self.label}: tcpdump not listening after "
                                   f"{START_TIMEOUT:.0f} s: {res.stdout.strip()[-300:]}")
            time.sleep(0.05)

    def stop(self) -> list[Packet]:
        """Stop tcpdump, bring the pcap back, decode it, remove the files."""
        if self.pid is None:
            return self.packets
        pcap, err = shlex.quote(self.path + ".pcap"), shlex.quote(self.path + ".err")
        # Wait while the process runs: once gone or a zombie (its reaper may be slow), the
        # pcap is complete.
        state = f"sed 's/^.*) //' /proc/{self.pid}/stat 2>/dev/null | cut -c1"
        script = (f"kill -TERM {self.pid} 2>/dev/null; i=0; while s=$({state}); "
                  '[ -n "$s" ] && [ "$s" != Z ] && [ $i -lt 100 ]; do sleep 0.02; '
                  f"i=$((i+1)); done; {_LINKS}; echo {_PCAP_MARK}; "
                  f"[ -s {pcap} ] && base64 -w0 {pcap}; echo; rm -f {pcap} {err}")
        res = self.run(["sh", "-c", script])
        self.pid = None
        links, _, encoded = res.stdout.partition(_PCAP_MARK + "\n")
        # Interfaces seen at the start or the end (a pod's veth may come or go meanwhile).
        self.interfaces = {**self.interfaces, **parse_links(links)}
        try:
            self.pcap = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CaptureError(f"{self.label}: the capture file did not come back: "
                               f"{exc}") from exc
        self.packets = read_pcap(self.pcap, self.interfaces) if self.pcap else []
        return self.packets


class Captures:
    """Several captures started and stopped together (`with Captures([...]) as caps`)."""

    def __init__(self, captures: Sequence[Capture]):
        self.by_label = {c.label: c for c in captures}

    def __enter__(self) -> Captures:
        started = []
        try:
            for cap in self.by_label.values():
                started.append(cap.start())
        except Exception:
            for cap in started:
                cap.stop()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        for cap in self.by_label.values():
            cap.stop()

    def packets(self) -> dict[str, list[Packet]]:
        return {label: cap.packets for label, cap in self.by_label.items()}

    def save(self, directory: str, prefix: str) -> list[str]:
        """Write each capture's pcap to `directory/<prefix>-<label>.pcap`."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for label, cap in self.by_label.items():
            path = os.path.join(directory, f"{prefix}-{label}.pcap")
            with open(path, "wb") as fh:
                fh.write(cap.pcap)
            paths.append(path)
        return paths
