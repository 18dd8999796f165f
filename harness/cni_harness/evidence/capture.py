"""Packet captures as evidence: tcpdump in a namespace, parsed into packets, counted.

`Capture` (edge) runs tcpdump on every interface of one namespace (a node, the client, the
fabric) through a command runner, writing a pcap there; `stop` ends it and reads the file
back with `tcpdump -r -nn -v`. Everything else is pure: `parse_tcpdump` turns that text into
`Packet`s (interface, direction, addresses, ports, TCP flags, IP options) and `counts`
tallies them per interface and direction.

Captures use `-i any` with the LINUX_SLL2 link type, so each packet carries the interface
and direction the kernel saw (`eth0 In`, `lxc… Out`). A capture sees a packet as it
arrived (before tc ingress programs) and as it left (after tc egress programs).
"""

from __future__ import annotations

import os
import re
import shlex
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

# Stops a capture that nobody stopped (a crashed test run): nothing is left running.
MAX_CAPTURE_SECONDS = 300
START_TIMEOUT = 10.0
DIRECTIONS = {"In": "in", "Out": "out", "M": "in", "B": "in", "P": "in"}
DSR_OPTION = "unknown 154"   # how tcpdump names the IPv4 option type 0x9a

_HEAD = re.compile(
    r"^\d\d:\d\d:\d\d\.\d+\s+(?P<iface>\S+)\s+(?P<dir>In|Out|M|B|P)\s+IP\s+"
    r"\((?P<ip>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")
_ENDPOINTS = re.compile(
    r"^\s+(?P<src>\d+\.\d+\.\d+\.\d+)(?:\.(?P<sport>\d+))?\s+>\s+"
    r"(?P<dst>\d+\.\d+\.\d+\.\d+)(?:\.(?P<dport>\d+))?:\s*(?P<rest>.*)$")
_PROTO = re.compile(r"proto (\w+) \(\d+\)")
_LENGTH = re.compile(r"length (\d+)")
_OPTIONS = re.compile(r"options \((.*)\)\s*$")
_TCP_FLAGS = re.compile(r"Flags \[([^\]]*)\]")


class CaptureError(RuntimeError):
    """tcpdump could not be started or read; the message says where and why."""


@dataclass(frozen=True)
class Packet:
    """One captured IPv4 packet as tcpdump decoded it."""

    iface: str
    direction: str          # in / out (as the capturing namespace saw it)
    proto: str              # TCP, UDP, ICMP, ...
    src: str
    sport: int | None
    dst: str
    dport: int | None
    length: int             # IP total length
    tcp_flags: str = ""     # tcpdump's notation: S, S., ., P., F., R
    ip_options: tuple[str, ...] = ()

    @property
    def has_dsr_option(self) -> bool:
        return any(opt.startswith(DSR_OPTION) for opt in self.ip_options)

    @property
    def is_syn(self) -> bool:
        return self.proto == "TCP" and "S" in self.tcp_flags and "." not in self.tcp_flags

    def endpoint(self, which: str) -> tuple[str, int | None]:
        return (self.src, self.sport) if which == "src" else (self.dst, self.dport)


def parse_tcpdump(text: str) -> list[Packet]:
    """Packets from `tcpdump -r FILE -nn -v` output of an `-i any` capture (LINUX_SLL2).

    Each packet is a header line (time, interface, direction, the IP header in parentheses)
    followed by an indented `src.port > dst.port: ...` line; payload lines are skipped."""
    packets: list[Packet] = []
    head = None
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m:
            head = m
            continue
        if head is None:
            continue
        e = _ENDPOINTS.match(line)
        if not e:
            continue
        ip = head.group("ip")
        proto = _PROTO.search(ip)
        length = _LENGTH.search(ip)
        options = _OPTIONS.search(ip)
        flags = _TCP_FLAGS.search(e.group("rest"))
        packets.append(Packet(
            iface=head.group("iface"), direction=DIRECTIONS[head.group("dir")],
            proto=proto.group(1) if proto else "?",
            src=e.group("src"), sport=int(e.group("sport")) if e.group("sport") else None,
            dst=e.group("dst"), dport=int(e.group("dport")) if e.group("dport") else None,
            length=int(length.group(1)) if length else 0,
            tcp_flags=flags.group(1) if flags else "",
            ip_options=tuple(o.strip() for o in options.group(1).split(",")) if options else ()))
        head = None
    return packets


def counts(packets: Iterable[Packet], classify: Callable[[Packet], str | None] = lambda _p: "all"
           ) -> dict[str, dict[str, int]]:
    """{interface: {"<class> <direction>": n}} for the packets `classify` names (None: skip)."""
    out: dict[str, Counter] = {}
    for p in packets:
        kind = classify(p)
        if kind is None:
            continue
        out.setdefault(p.iface, Counter())[f"{kind} {p.direction}"] += 1
    return {iface: dict(sorted(c.items())) for iface, c in sorted(out.items())}


Runner = Callable[[Sequence[str]], "object"]   # argv -> CompletedProcess (stdout, returncode)


@dataclass
class Capture:
    """tcpdump on every interface of one namespace, reachable through `run`."""

    label: str                          # e.g. "node1", "client", "fabric"
    run: Runner
    bpf_filter: str = ""
    path: str = field(default_factory=lambda: f"/tmp/cni-harness-cap-{uuid.uuid4().hex[:12]}")
    pid: int | None = None
    packets: list[Packet] = field(default_factory=list)
    text: str = ""                      # tcpdump's decoding, kept as an evidence file

    def start(self) -> Capture:
        """Start tcpdump and return once it listens (so no early packet is missed)."""
        pcap, err = shlex.quote(self.path + ".pcap"), shlex.quote(self.path + ".err")
        # --immediate-mode: packets reach the file at once, not when a ring block fills
        # (a stop would lose the block's packets).
        # -s 256: headers are all the checks read; -B: no kernel-side drop in a burst.
        script = (f"timeout {MAX_CAPTURE_SECONDS} tcpdump -i any -y LINUX_SLL2 -nn -U -s 256 "
                  f"-B 4096 --immediate-mode -w {pcap} {shlex.quote(self.bpf_filter)} "
                  f"</dev/null >/dev/null 2>{err} & echo $!")
        res = self.run(["sh", "-c", script])
        try:
            self.pid = int(res.stdout.strip())
        except ValueError as exc:
            raise CaptureError(f"{self.label}: tcpdump did not start: {res.stdout!r} "
                               f"{getattr(res, 'stderr', '')!r}") from exc
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
        """Stop tcpdump, read the packets, remove the files."""
        if self.pid is None:
            return self.packets
        pcap, err = shlex.quote(self.path + ".pcap"), shlex.quote(self.path + ".err")
        # Wait while the process runs: once gone or a zombie (its reaper may be slow), the
        # pcap is complete.
        state = f"sed 's/^.*) //' /proc/{self.pid}/stat 2>/dev/null | cut -c1"
        script = (f"kill -TERM {self.pid} 2>/dev/null; i=0; while s=$({state}); "
                  '[ -n "$s" ] && [ "$s" != Z ] && [ $i -lt 100 ]; do sleep 0.02; '
                  f"i=$((i+1)); done; [ -s {pcap} ] && tcpdump -r {pcap} -nn -v 2>/dev/null; "
                  f"rm -f {pcap} {err}")
        res = self.run(["sh", "-c", script])
        self.pid = None
        self.text = res.stdout
        self.packets = parse_tcpdump(self.text)
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
        """Write each capture's decoded text to `directory/<prefix>-<label>.txt`."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for label, cap in self.by_label.items():
            path = os.path.join(directory, f"{prefix}-{label}.txt")
            with open(path, "w") as fh:
                fh.write(cap.text)
            paths.append(path)
        return paths
