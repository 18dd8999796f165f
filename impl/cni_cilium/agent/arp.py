"""Announcing egress gateway VIPs on the node network: ARP replies and gratuitous ARP (edge).

The VIP is on no interface. The active node's agent answers ARP requests for it on the
announcing interfaces (the uplink unless the EgressGateway lists `interfaces`) from a raw
AF_PACKET socket, and on taking the VIP over sends gratuitous ARP (a request and a reply,
sender = target = VIP) a few times, so the L2 neighbour that routes to the VIP (the
router) moves its entry to this node's MAC at once instead of when it next probes.

Why in the agent and not a tc/XDP program: the VIP must be answered by exactly the node
the election made active and by no other. An agent that dies stops answering with it, and
its peers, which elect without it, move the VIP; a BPF responder would outlive a dead agent
and keep answering for a VIP another node took over (two MACs for one address). ARP is a
few packets a minute, and gratuitous ARP needs user space anyway; the datapath's programs
stay free of it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from ..datapath.links import interface_mac

log = logging.getLogger("cni-cilium.arp")

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST = b"\xff" * 6
PACKET_OUTGOING = 4
GARP_SCHEDULE = (0.0, 0.5, 1.5)     # seconds after a takeover: one loss does not matter
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True)
class Arp:
    op: int
    sha: bytes
    spa: str
    tha: bytes
    tpa: str


def parse_arp(frame: bytes) -> Arp | None:
    """An Ethernet/IPv4 ARP packet, or None."""
    if len(frame) < _ETH.size + _ARP.size:
        return None
    _dst, _src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return Arp(op, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa))


def arp_frame(op: int, eth_dst: bytes, mac: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    """An Ethernet frame carrying one ARP packet from `mac`."""
    return _ETH.pack(eth_dst, mac, ETH_P_ARP) + _ARP.pack(
        1, ETH_P_IP, 6, 4, op, mac, socket.inet_aton(spa), tha, socket.inet_aton(tpa))


def gratuitous(mac: bytes, vip: str) -> list[bytes]:
    """Gratuitous ARP for `vip`: a broadcast request and a broadcast reply."""
    return [arp_frame(ARP_REQUEST, BROADCAST, mac, vip, b"\x00" * 6, vip),
            arp_frame(ARP_REPLY, BROADCAST, mac, vip, BROADCAST, vip)]


def reply_to(request: Arp, mac: bytes) -> bytes:
    """The ARP reply saying `mac` has the requested address."""
    return arp_frame(ARP_REPLY, request.sha, mac, request.tpa, request.sha, request.spa)


def _mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class VipAnnouncer:
    """Answers ARP for the VIPs it is given and sends gratuitous ARP for new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._vips: dict[str, tuple[str, ...]] = {}         # VIP -> interfaces
        self._sockets: dict[str, tuple[socket.socket, bytes]] = {}   # ifname -> (sock, mac)
        self._garp_due: list[tuple[float, str, str]] = []   # (when, vip, ifname)
        self.replies = 0
        self.garps = 0
        self.takeovers = 0
        self.errors: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="arp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:
            for sock, _mac in self._sockets.values():
                sock.close()
            self._sockets.clear()

    def update(self, announce: Mapping[str, tuple[str, ...]], uplink: str | None) -> None:
        """Announce exactly these VIPs (VIP -> interfaces; none given: the uplink)."""
        wanted = {vip: ifaces or ((uplink,) if uplink else ()) for vip, ifaces in
                  announce.items()}
        with self._lock:
            needed = {i for ifaces in wanted.values() for i in ifaces}
            for ifname in set(self._sockets) - needed:
                self._sockets.pop(ifname)[0].close()
            for ifname in needed - set(self._sockets):
                opened = self._open(ifname)
                if opened:
                    self._sockets[ifname] = opened
            now = time.monotonic()
            for vip, ifaces in wanted.items():
                for ifname in ifaces:
                    if ifname in self._sockets and ifname not in self._vips.get(vip, ()):
                        log.info("VIP %s: announced on %s (%s); gratuitous ARP follows", vip,
                                 ifname, self._sockets[ifname][1].hex(":"))
                        self.takeovers += 1
                        self._garp_due += [(now + d, vip, ifname) for d in GARP_SCHEDULE]
            for vip in set(self._vips) - set(wanted):
                log.info("VIP %s: no longer announced by this node", vip)
            self._vips = {vip: tuple(i for i in ifaces if i in self._sockets)
                          for vip, ifaces in wanted.items()}
            self._garp_due = [d for d in self._garp_due if d[2] in self._vips.get(d[1], ())]

    def announced(self) -> tuple[str, ...]:
        """VIPs answered on at least one interface."""
        with self._lock:
            return tuple(sorted(vip for vip, ifaces in self._vips.items() if ifaces))

    def status(self) -> dict:
        with self._lock:
            return {"vips": {vip: {"interfaces": list(ifaces),
                                   "macs": [self._sockets[i][1].hex(":") for i in ifaces]}
                             for vip, ifaces in sorted(self._vips.items())},
                    "arpReplies": self.replies, "gratuitousArpSent": self.garps,
                    "takeovers": self.takeovers, "errors": dict(self.errors)}

    def _open(self, ifname: str) -> tuple[socket.socket, bytes] | None:
        mac = interface_mac(ifname)
        try:
            if not mac:
                raise OSError(f"no such interface {ifname} (or it has no MAC)")
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            sock.bind((ifname, ETH_P_ARP))
            sock.setblocking(False)
        except OSError as exc:
            if self.errors.get(ifname) != str(exc):
                log.error("ARP on %s: cannot announce: %s", ifname, exc)
            self.errors[ifname] = str(exc)
            return None
        self.errors.pop(ifname, None)
        return sock, _mac_bytes(mac)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                socks = {sock: (ifname, mac) for ifname, (sock, mac) in self._sockets.items()}
            try:
                readable = select.select(list(socks), [], [], 0.1)[0] if socks else []
            except (OSError, ValueError):      # a socket closed under us: next round
                readable = []
            if not socks:
                self._stop.wait(0.1)
            for sock in readable:
                self._answer(sock, *socks[sock])
            self._send_due()

    def _answer(self, sock: socket.socket, ifname: str, mac: bytes) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                frame, addr = sock.recvfrom(2048)
                if addr[2] == PACKET_OUTGOING:
                    continue
                arp = parse_arp(frame)
                with self._lock:
                    ours = arp is not None and ifname in self._vips.get(arp.tpa, ())
                if ours and arp.op == ARP_REQUEST and arp.sha != mac:
                    sock.send(reply_to(arp, mac))
                    self.replies += 1

    def _send_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [d for d in self._garp_due if d[0] <= now]
            self._garp_due = [d for d in self._garp_due if d[0] > now]
            jobs = [(self._sockets[i], vip) for _t, vip, i in due if i in self._sockets]
        for (sock, mac), vip in jobs:
            for frame in gratuitous(mac, vip):
                with contextlib.suppress(OSError):
                    sock.send(frame)
                    self.garps += 1
