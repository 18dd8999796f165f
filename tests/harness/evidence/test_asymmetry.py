"""Judging DSR and SNAT from packet captures (pure), on real recorded exchanges.

The records in data/dsr/ were written by the DSR suite (`tests/e2e/test_dsr.py` with
CNI_HARNESS_RESULTS_DIR set) on a 3-node local cluster: the external client 10.99.0.100
talked to node1's NodePort of a service whose only backend runs on node2, while tcpdump
captured in node1, node2, the client and the fabric. They hold each capture's packets as
the decoder (`evidence.pcap`) gives them: what the wire showed, so each check here is tried
against real SNAT- and DSR-shaped traffic.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct

import pytest

from cni_harness.evidence.asymmetry import Observation, check_dsr, check_snat, diagnose
from cni_harness.evidence.pcap import counts, read_pcap
from cni_harness.providers.local import sourceguard
from cni_harness.providers.local.addressing import plan_cluster

pytestmark = pytest.mark.unit

DATA = os.path.join(os.path.dirname(__file__), "data", "dsr")


def recorded(name: str) -> Observation:
    with open(os.path.join(DATA, name + ".json")) as fh:
        return Observation.from_record(json.load(fh))


@pytest.mark.parametrize("name", ["dsr-tcp", "dsr-udp"])
def test_real_dsr_exchanges_pass_the_dsr_checks_and_fail_the_snat_ones(name):
    obs = recorded(name)
    assert check_dsr(obs) == []
    problems = check_snat(obs)
    assert any("not the receiving node 10.99.0.11" in p for p in problems)
    assert any("crossed the backend node's uplink" in p for p in problems)


@pytest.mark.parametrize("name", ["snat-tcp", "snat-udp"])
def test_real_snat_exchanges_fail_the_dsr_checks(name):
    """The checker rejects SNAT-shaped captures: replies through node1, node1's address at
    the backend, no option."""
    obs = recorded(name)
    assert check_snat(obs) == []
    problems = check_dsr(obs)
    assert any("reply packets passed the receiving node's uplink (node1 eth0)" in p
               for p in problems), problems
    assert any("not the client 10.99.0.100" in p for p in problems)
    assert any("do not all carry the DSR option" in p for p in problems)
    assert any("node2 sent replies other than frontend -> client" in p for p in problems)


def test_dsr_packets_per_interface_show_the_asymmetry():
    table = recorded("dsr-tcp").table()
    assert "reply out" in table["node2 eth0"]          # replies leave the backend's node
    assert "reply in" in table["client eth0"]
    assert not any(k.startswith("reply") for k in table["node1 eth0"])
    assert set(table["node1 eth0"]) == {"request in", "request out"}


def test_the_option_is_on_the_forwarded_syn_and_stripped_before_the_pod():
    obs = recorded("dsr-tcp")
    forwarded = [p for p in obs.packets["node1"] if p.iface == "eth0" and p.direction == "out"]
    assert {p.has_dsr_option for p in forwarded if p.is_syn} == {True}
    assert {p.has_dsr_option for p in forwarded if not p.is_syn} == {False}
    syn_in, syn_to_pod = (next(p for p in obs.packets["node2"] if p.is_syn and p.iface == i)
                          for i in ("eth0", next(p.iface for p in obs.packets["node2"]
                                                 if p.iface.startswith("lxc"))))
    assert syn_in.has_dsr_option and syn_in.length == syn_to_pod.length + 8
    assert not syn_to_pod.has_dsr_option


def test_every_dsr_udp_datagram_carries_the_option():
    obs = recorded("dsr-udp")
    forwarded = [p for p in obs.packets["node1"] if p.iface == "eth0" and p.direction == "out"]
    assert forwarded and all(p.has_dsr_option for p in forwarded)


def test_a_source_guard_block_is_diagnosed_as_such():
    obs = recorded("dsr-tcp-source-guard")
    assert len(obs.failures) == 2
    cause = diagnose(obs)
    assert "left node1 but never reached node2" in cause
    assert sourceguard.CAUSE in cause
    assert any(sourceguard.CAUSE in p for p in check_dsr(obs))


def test_a_loss_without_guard_drops_is_not_blamed_on_the_guard():
    obs = recorded("dsr-tcp-source-guard")
    obs.guard_drops = {}
    cause = diagnose(obs)
    assert sourceguard.CAUSE not in cause
    assert "dropped on the fabric between them" in cause


def test_a_request_sent_to_a_stale_backend_is_named():
    obs = recorded("dsr-udp")
    moved = ("10.100.2.99", obs.flow.backend[1])
    obs.flow = type(obs.flow)(**{**obs.flow.__dict__, "backend": moved})
    obs.answers = [{"error": "TimeoutError: timed out"}]
    assert "not to the backend 10.100.2.99:8080" in diagnose(obs)


def test_records_round_trip():
    obs = recorded("snat-udp")
    again = Observation.from_record(json.loads(json.dumps(obs.to_record())))
    assert again.table() == obs.table() and again.flow == obs.flow


def _sll2(ifindex: int, pkttype: int, ip: bytes) -> bytes:
    """One packet as `tcpdump -i any -y LINUX_SLL2` records it."""
    return (struct.pack("!HHIHBB", 0x0800, 0, ifindex, 1, pkttype, 6) + b"\x02" * 6
            + b"\x00\x00" + ip)


def _ipv4(src: str, dst: str, proto: int, l4: bytes, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    return (struct.pack("!BBHHHBBH", 0x40 | ihl, 0, ihl * 4 + len(l4), 0, 0x4000, 64, proto, 0)
            + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + options + l4)


def test_the_decoder_reads_interface_direction_and_options():
    dsr_option = bytes([0x9A, 8]) + struct.pack("!H", 30000) + bytes([10, 99, 0, 11])
    syn = _ipv4("10.99.0.100", "10.100.2.5", 6,
                struct.pack("!HHIIBBHHH", 25150, 8080, 1, 0, 0xA0, 0x02, 64240, 0, 0)
                + b"\x01" * 20,                     # TCP options (no-ops), as a SYN has
                dsr_option)
    reply = _ipv4("10.99.0.11", "10.99.0.100", 17,
                  struct.pack("!HHHH", 30001, 25150, 40, 0) + b"x" * 32)
    frames = [_sll2(2, 0, syn), _sll2(2, 4, reply)]
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 256, 276) + b"".join(
        struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)
    syn, reply = read_pcap(data, {2: "eth0"})
    assert (syn.iface, syn.direction, syn.proto, syn.length) == ("eth0", "in", "TCP", 68)
    assert syn.has_dsr_option and syn.is_syn and syn.endpoint("dst") == ("10.100.2.5", 8080)
    assert (reply.direction, reply.proto, reply.sport, reply.ip_options) == (
        "out", "UDP", 30001, ())
    assert counts([syn, reply]) == {"eth0": {"all in": 1, "all out": 1}}


def test_source_guard_rules_name_each_node_port_and_its_addresses():
    plan = plan_cluster("ds9", 2)
    script = sourceguard.ruleset(plan)
    assert 'iifname "' in script and "10.99.0.11, 10.100.1.0/24" in script
    assert script.count("counter drop") == 2
    assert "delete table bridge" in sourceguard.removal()


def test_source_guard_counters_parse_from_nft_json():
    with open(os.path.join(DATA, "nft-source-guard.json")) as fh:
        drops = sourceguard.parse_drops(fh.read())
    assert drops == {"node1": 0, "node2": 0, "node3": 0}


def test_frames_flooded_by_the_learning_bridge_are_not_taken_for_a_path():
    """Recorded right after a redeploy: the fabric bridge had not learnt node1's MAC and
    flooded the client's first SYN to node2 and node3 too. That copy is not DSR traffic."""
    obs = recorded("snat-tcp-flooded")
    flooded = [p for p in obs.packets["node2"] if p.iface == "eth0" and p.src == "10.99.0.100"]
    assert flooded and {p.dst for p in flooded} == {"10.99.0.11"}
    assert check_snat(obs) == []
    assert any("reply packets passed the receiving node's uplink" in p for p in check_dsr(obs))
