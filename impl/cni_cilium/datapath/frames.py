"""Ethernet frames of IPv4 TCP segments for BPF_PROG_TEST_RUN (pure): what the datapath's
tests and the per-packet benchmark run through the programs. No frame is ever sent."""

from __future__ import annotations

import struct

from ..bpfabi import ip_bytes, ip_str

TCP_FIN, TCP_SYN, TCP_ACK = 0x01, 0x02, 0x10
_ETH_HEADER = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00"


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int = TCP_SYN,
              payload: bytes = b"") -> bytes:
    """An Ethernet frame with an IPv4 TCP segment, both checksums right (the programs fix
    them incrementally, so a wrong one would stay wrong, not be caught)."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
                    + payload)
    pseudo = ip_bytes(src) + ip_bytes(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp[16:18] = struct.pack("!H", checksum(pseudo + bytes(tcp)))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                               ip_bytes(src), ip_bytes(dst)))
    ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
    return _ETH_HEADER + bytes(ip) + bytes(tcp)


def ipv4_tuple(frame: bytes) -> tuple[str, int, str, int]:
    """(source, source port, destination, destination port) of a frame from `tcp_frame`
    (as a program left it)."""
    sport, dport = struct.unpack_from("!HH", frame, 34)
    return ip_str(frame[26:30]), sport, ip_str(frame[30:34]), dport


def checksums_verify(frame: bytes) -> bool:
    """Whether a TCP frame's IPv4 header and TCP checksums both verify (any header length:
    a program may have added IP options)."""
    ihl = (frame[14] & 0x0F) * 4
    ip, tcp = frame[14:14 + ihl], frame[14 + ihl:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    return checksum(ip) == 0 and checksum(pseudo + tcp) == 0
