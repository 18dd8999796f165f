"""The frames the datapath tests and the per-packet benchmark run through the programs."""

from __future__ import annotations

import struct

import pytest

from cni_cilium.datapath.frames import TCP_ACK, TCP_SYN, checksum, ipv4_tuple, tcp_frame

pytestmark = pytest.mark.unit


def test_both_checksums_verify_and_the_tuple_reads_back():
    frame = tcp_frame("10.99.0.100", "10.99.0.11", 40001, 30080, TCP_SYN | TCP_ACK, b"hello")
    ip, tcp = frame[14:34], frame[34:]
    assert checksum(ip) == 0
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert checksum(pseudo + tcp) == 0
    assert tcp[13] == TCP_SYN | TCP_ACK and tcp.endswith(b"hello")
    assert ipv4_tuple(frame) == ("10.99.0.100", 40001, "10.99.0.11", 30080)


def test_an_odd_length_is_padded_for_the_sum():
    assert checksum(b"\x01") == checksum(b"\x01\x00") == 0xFEFF
