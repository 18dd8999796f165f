"""The frames the datapath tests and the per-packet benchmark run through the programs."""

from __future__ import annotations

import pytest

from cni_cilium.datapath.frames import (
    TCP_ACK,
    TCP_SYN,
    checksum,
    checksums_verify,
    ipv4_tuple,
    tcp_frame,
)

pytestmark = pytest.mark.unit


def test_both_checksums_verify_and_the_tuple_reads_back():
    frame = tcp_frame("10.99.0.100", "10.99.0.11", 40001, 30080, TCP_SYN | TCP_ACK, b"hello")
    tcp = frame[34:]
    assert checksums_verify(frame)
    assert not checksums_verify(frame[:-1] + bytes([frame[-1] ^ 1]))
    assert tcp[13] == TCP_SYN | TCP_ACK and tcp.endswith(b"hello")
    assert ipv4_tuple(frame) == ("10.99.0.100", 40001, "10.99.0.11", 30080)


def test_an_odd_length_is_padded_for_the_sum():
    assert checksum(b"\x01") == checksum(b"\x01\x00") == 0xFEFF
