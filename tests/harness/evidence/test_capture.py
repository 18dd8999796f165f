"""The one pcap decoder: VXLAN outer and inner addresses, cooked captures, and the VXLAN /
plain pod-address summary of a capture."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from cni_harness.evidence.pcap import CaptureError, decode, read_pcap, summarize_pcap

pytestmark = pytest.mark.unit

MAC = b"\x02\x00\x00\x00\x00\x01"


def eth(payload: bytes, vlan: bool = False) -> bytes:
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return MAC + MAC + tag + b"\x08\x00" + payload


def ipv4(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    return (struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0)
            + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + l4)


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)


def vxlan(src: str, dst: str, vni: int, inner: bytes, port: int = 8472) -> bytes:
    header = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00"
    udp_payload = header + inner
    udp = struct.pack("!HHHH", 40000, port, 8 + len(udp_payload), 0) + udp_payload
    return eth(ipv4(src, dst, 17, udp))


def pcap(frames: list[bytes], linktype: int = 1) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for frame in frames:
        out += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    return out


POD_A, POD_B = "10.100.1.5", "10.100.2.7"
PLAIN = eth(ipv4(POD_A, POD_B, 6, tcp(33000, 8080)))
ENCAP = vxlan("10.99.0.11", "10.99.0.12", 1, eth(ipv4(POD_A, POD_B, 6, tcp(33000, 8080))))


def test_vxlan_packets_decode_outer_and_inner_addresses_and_the_vni():
    packet = decode(ENCAP)
    assert packet.vxlan and packet.vni == 1 and packet.dport == 8472
    assert (packet.src, packet.dst) == ("10.99.0.11", "10.99.0.12")
    assert (packet.inner_src, packet.inner_dst, packet.inner_proto) == (POD_A, POD_B, "TCP")


def test_plain_and_vlan_tagged_packets_and_non_ip_frames():
    assert decode(PLAIN).vxlan is False and decode(PLAIN).dport == 8080
    tagged = decode(eth(ipv4(POD_A, POD_B, 6, tcp(1, 2)), vlan=True))
    assert (tagged.src, tagged.dport) == (POD_A, 2)
    assert decode(MAC + MAC + b"\x08\x06" + b"\x00" * 28) is None   # ARP
    # UDP to another port is not VXLAN, whatever its payload looks like
    other = decode(eth(ipv4("10.99.0.11", "10.99.0.12", 17,
                            struct.pack("!HHHH", 1, 53, 16, 0) + b"\x08" + b"\x00" * 7)))
    assert not other.vxlan


def test_summary_counts_encapsulated_and_plain_pod_traffic():
    summary = summarize_pcap(pcap([ENCAP, ENCAP, PLAIN,
                                   eth(ipv4("10.99.0.11", "10.99.0.12", 6, tcp(22, 5000)))]),
                             "10.100.0.0/16")
    assert summary["packets"] == 4
    assert summary["vxlan"] == {"packets": 2, "ports": [8472], "vnis": [1],
                                "outer": {"10.99.0.11>10.99.0.12": 2},
                                "inner": {f"{POD_A}>{POD_B}": 2}}
    assert summary["plainPod"] == {"packets": 1, "pairs": {f"{POD_A}>{POD_B}": 1}}


def sll2(frame: bytes, pkttype: int) -> bytes:
    """An Ethernet frame as `tcpdump -i any` records it (LINUX_SLL2)."""
    return (frame[12:14] + b"\x00\x00" + struct.pack("!IHBB", 3, 1, pkttype, 6) + MAC
            + b"\x00\x00" + frame[14:])


def sll(frame: bytes, pkttype: int) -> bytes:
    return struct.pack("!HHH", pkttype, 1, 6) + MAC + b"\x00\x00" + frame[12:14] + frame[14:]


def test_cooked_any_captures_count_each_bridged_frame_once():
    # A bridged frame is seen arriving on one port (0 = to us, 3 = to another host) and
    # leaving another (4 = outgoing): the outgoing copy is not counted.
    for wrap, linktype in ((sll2, 276), (sll, 113)):
        frames = [wrap(ENCAP, 3), wrap(ENCAP, 4), wrap(PLAIN, 0), wrap(PLAIN, 4)]
        summary = summarize_pcap(pcap(frames, linktype), "10.100.0.0/16")
        assert summary["vxlan"]["packets"] == 1 and summary["vxlan"]["vnis"] == [1], linktype
        assert summary["vxlan"]["inner"] == {f"{POD_A}>{POD_B}": 1}, linktype
        assert summary["plainPod"]["packets"] == 1, linktype


def test_bad_files_are_refused_by_what_is_wrong():
    with pytest.raises(CaptureError, match="magic"):
        read_pcap(b"not a capture at all....")
    with pytest.raises(CaptureError, match="link type 101"):
        read_pcap(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    assert read_pcap(pcap([])) == []


def test_cooked_captures_name_interface_direction_and_tcp_flags():
    syn_ack = eth(ipv4(POD_B, POD_A, 6, struct.pack("!HHIIBBHHH", 8080, 33000, 0, 0, 0x50,
                                                    0x12, 1024, 0, 0)))
    arrived, left, answer = read_pcap(pcap([sll2(PLAIN, 0), sll2(PLAIN, 4), sll2(syn_ack, 0)],
                                           276), {3: "eth0"})
    assert (arrived.iface, arrived.direction, arrived.tcp_flags) == ("eth0", "in", "S")
    assert (left.direction, left.is_syn) == ("out", True)
    assert (answer.tcp_flags, answer.is_syn) == ("S.", False)
    assert read_pcap(pcap([sll2(PLAIN, 0)], 276))[0].iface == "if3"    # name unknown


def test_interface_names_come_from_ip_link_lines():
    from cni_harness.evidence.capture import parse_links

    assert parse_links("1: lo\n2: eth0@if5\n 14: lxc1d44a9cb50f@if13\nnoise\n") == {
        1: "lo", 2: "eth0", 14: "lxc1d44a9cb50f"}
