"""The Python view of the datapath ABI agrees with bpf/lib/maps.h and round-trips."""

from __future__ import annotations

import os
import re

import pytest

from cni_cilium import bpfabi
from cni_cilium.bpfabi import (
    Backend,
    CtEntry,
    CtKey,
    Frontend,
    FrontendValue,
    NodeConfig,
    TunnelConfig,
    TunnelEndpoint,
    decode_lpm_key,
    decode_slot_key,
    lpm_key,
    slot_key,
)

pytestmark = pytest.mark.unit

MAPS_H = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "lib", "maps.h")


@pytest.fixture(scope="module")
def maps_h() -> str:
    with open(MAPS_H, encoding="utf-8") as fh:
        return fh.read()


def c_defines(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(
        r"^#define\s+([A-Z][A-Z0-9_]*)\s+(0x[0-9A-Fa-f]+|\d+)\b", text, re.M)}


def test_flag_and_kind_constants_match_the_c_defines(maps_h):
    defines = c_defines(maps_h)
    python = {name: getattr(bpfabi, name) for name in dir(bpfabi)
              if re.match(r"^(FE|BE|CT|CFG|TUNNEL_F)_[A-Z_]+$", name) and isinstance(
                  getattr(bpfabi, name), int)}
    assert python, "no constants found"
    for name, value in python.items():
        assert defines.get(name) == value, name
    c_only = {n for n in defines if re.match(r"^(FE|BE|CT|CFG|TUNNEL_F)_", n)} - set(python)
    assert c_only == set(), f"defined in maps.h but not in bpfabi: {c_only}"
    for name in ("LB_ALG_RANDOM", "LB_ALG_MAGLEV", "LB_ALG_LEAST_CONN"):
        key = name[len("LB_ALG_"):].lower().replace("_", "-")
        assert bpfabi.LB_ALGORITHMS[key] == defines[name]
    modes = {"SNAT": defines["LB_MODE_SNAT"], "DSR": defines["LB_MODE_DSR"]}
    assert modes == bpfabi.LB_MODES


def test_the_translated_mark_matches_the_c_define():
    with open(os.path.join(os.path.dirname(MAPS_H), "fib.h"), encoding="utf-8") as fh:
        assert c_defines(fh.read())["MARK_TRANSLATED"] == bpfabi.MARK_TRANSLATED


def test_stat_names_follow_the_c_enum_in_order(maps_h):
    body = re.search(r"enum stat_id \{(.*?)\};", maps_h, re.S).group(1)
    entries = re.findall(r"STAT_([A-Z_]+)\s*=\s*(\d+)", body)
    names = [(name.lower(), int(value)) for name, value in entries if name != "MAX"]
    assert [n for n, _ in names] == list(bpfabi.STAT_NAMES)
    assert [v for _, v in names] == list(range(len(names)))
    assert int(dict(entries)["MAX"]) == len(bpfabi.STAT_NAMES) == bpfabi.MAP_CAPACITY["stats"]


def test_map_capacities_match_the_declarations(maps_h):
    declared = {}
    for m in re.finditer(r'BPF_TABLE_PINNED\("[a-z_]+",\s*[^,]+,\s*[^,]+,\s*(\w+),\s*(\w+),',
                         maps_h):
        size = m.group(2)
        declared[m.group(1)] = len(bpfabi.STAT_NAMES) if size == "STAT_MAX" else int(size)
    for m in re.finditer(r'^BPF_RINGBUF_PINNED\((\w+),\s*(\d+),', maps_h, re.M):
        declared[m.group(1)] = int(m.group(2))
    assert declared == bpfabi.MAP_CAPACITY


def test_entries_round_trip_through_bytes():
    fe = Frontend("10.96.0.10", 8080, "UDP")
    assert Frontend.decode(fe.encode()) == fe
    assert fe.encode() == bytes([10, 96, 0, 10, 0x1F, 0x90, 17, 0])  # network order
    assert decode_slot_key(slot_key(fe, 3)) == (fe, 3)
    assert FrontendValue.decode(FrontendValue(7, 5, 1, 1).encode()) == FrontendValue(7, 5, 1, 1)
    be = Backend("10.100.1.5", 80, True)
    assert Backend.decode(be.encode()) == be
    key = CtKey("10.0.0.1", "10.0.0.2", 1234, 80, "TCP", bpfabi.CT_REPLY)
    assert CtKey.decode(key.encode()) == key
    entry = CtEntry("10.96.0.1", 80, bpfabi.CT_F_REDIRECT | bpfabi.CT_F_HAIRPIN, 100, 40, 3,
                    4000)
    assert CtEntry.decode(entry.encode()) == entry
    assert entry.flag_names() == ["redirect", "hairpin"]
    cfg = NodeConfig("10.99.0.11", "10.100.1.0/24", 61000, 65535, True)
    assert NodeConfig.decode(cfg.encode()) == cfg
    assert decode_lpm_key(lpm_key("10.100.0.0/16")) == "10.100.0.0/16"
    ep = TunnelEndpoint("10.99.0.12", True)
    assert TunnelEndpoint.decode(ep.encode()) == ep
    assert ep.encode() == bytes([10, 99, 0, 12, bpfabi.TUNNEL_F_NODE, 0, 0, 0])
    assert TunnelConfig.decode(TunnelConfig(7, 2).encode()) == TunnelConfig(7, 2)


def test_sizes_are_the_c_struct_sizes():
    assert bpfabi.SIZES == {"lb_key": 8, "lb_frontend": 24, "lb_slot_key": 12, "lb_backend": 8,
                            "ct_key": 16, "ct_entry": 32, "node_config": 24, "lpm_v4_key": 8,
                            "tunnel_endpoint": 8, "tunnel_config": 8, "lb_maglev_key": 12,
                            "lb_maglev_chunk": 128, "lb_backend_key": 8, "lb_conn_count": 8,
                            "lb_affinity_key": 12, "lb_affinity": 12, "lb_src_range_key": 16,
                            "ipcache_entry": 8,
                            "policy_key": 20, "policy_entry": 8, "policy_enforce_key": 8,
                            "policy_enforce": 4, "policy_config": 8, "flow_event": 48,
                            "flow_limit": 16, "egress_key": 12, "egress_gw": 16}


def test_the_maglev_chunk_size_matches_the_c_define(maps_h):
    assert c_defines(maps_h)["LB_MAGLEV_CHUNK"] == bpfabi.LB_MAGLEV_CHUNK


def test_lb_entries_of_the_algorithms_round_trip_through_bytes():
    table = Frontend("10.96.0.20", 80, "TCP")
    value = FrontendValue(5, bpfabi.FE_SOURCE_RANGES, bpfabi.LB_ALGORITHMS["maglev"], 1,
                          affinity_timeout=10800, maglev_size=16381, maglev_table=table)
    assert FrontendValue.decode(value.encode()) == value
    assert value.encode()[8:16] == (10800).to_bytes(4, "little") + (16381).to_bytes(4, "little")
    assert FrontendValue.decode(FrontendValue(1, 0).encode()).maglev_table is None
    assert bpfabi.decode_maglev_key(bpfabi.maglev_key(table, 1023)) == (table, 1023)
    entries = [Backend("10.100.1.5", 8080, True), None, Backend("10.100.2.7", 8080)]
    chunk = bpfabi.maglev_chunk(entries)
    assert len(chunk) == bpfabi.SIZES["lb_maglev_chunk"]
    assert bpfabi.decode_maglev_chunk(chunk) == entries + [None] * 13
    with pytest.raises(ValueError):
        bpfabi.maglev_chunk([None] * 17)
    key = bpfabi.BackendKey("10.100.1.5", 8080, "TCP")
    assert bpfabi.BackendKey.decode(key.encode()) == key
    assert bpfabi.decode_conn_count(bpfabi.conn_count(-1)) == -1
    aff = bpfabi.AffinityKey(table, "10.99.0.100")
    assert bpfabi.AffinityKey.decode(aff.encode()) == aff
    val = bpfabi.Affinity(Backend("10.100.1.5", 8080, True), 1234)
    assert bpfabi.Affinity.decode(val.encode()) == val
    raw = bpfabi.src_range_key(table, "192.0.2.0/24")
    assert raw[:4] == (64 + 24).to_bytes(4, "little")
    assert bpfabi.decode_src_range_key(raw) == (table, "192.0.2.0/24")


def test_policy_constants_match_the_c_defines(maps_h):
    defines = c_defines(maps_h)
    prefixes = r"^(ID|POLICY|FLOW|DROP)_[A-Z0-9_]+$"
    python = {name: getattr(bpfabi, name) for name in dir(bpfabi)
              if re.match(prefixes, name) and isinstance(getattr(bpfabi, name), int)}
    c_side = {n: v for n, v in defines.items() if re.match(prefixes, n)}
    assert python == c_side


def test_policy_entries_encode_as_the_lpm_compares_them():
    key = bpfabi.PolicyKey(300, bpfabi.POLICY_INGRESS, 6, 6, 8064, 11)
    raw = key.encode()
    assert raw[:4] == (bpfabi.POLICY_PREFIX_PROTO + 11).to_bytes(4, "little")
    assert raw[4:8] == (300).to_bytes(4, "big") and raw[12:16] == (6).to_bytes(4, "big")
    assert raw[18:20] == (8064).to_bytes(2, "big")            # network order: bits compare
    assert bpfabi.PolicyKey.decode(raw) == key
    any_proto = bpfabi.PolicyKey(1, bpfabi.POLICY_EGRESS, 0)
    assert any_proto.prefixlen == bpfabi.POLICY_PREFIX_PEER
    assert bpfabi.PolicyKey.decode(any_proto.encode()) == any_proto
    entry = bpfabi.PolicyEntry(bpfabi.POLICY_DENY, bpfabi.POLICY_MATCH_L3_L4, 17)
    assert bpfabi.PolicyEntry.decode(entry.encode()) == entry
    assert bpfabi.decode_ipcache_value(bpfabi.ipcache_value(16777300)) == 16777300
    assert bpfabi.decode_policy_enforce_key(bpfabi.policy_enforce_key(7, 2)) == (7, 2)
    cfg = bpfabi.PolicyConfig(True, 1000)
    assert bpfabi.PolicyConfig.decode(cfg.encode()) == cfg


def test_flow_events_decode():
    raw = ((123).to_bytes(8, "little") + bytes([10, 99, 0, 100, 10, 99, 0, 11])
           + (41000).to_bytes(2, "big") + (22).to_bytes(2, "big") + (2).to_bytes(4, "big")
           + (1).to_bytes(4, "big") + (5).to_bytes(4, "little") + (3).to_bytes(4, "little")
           + bytes([6, bpfabi.FLOW_DROPPED, bpfabi.DROP_POLICY_DENIED, bpfabi.POLICY_INGRESS,
                    bpfabi.POLICY_POINT_HOST_INGRESS, 0x02, 0, 0]) + bytes(4))
    ev = bpfabi.FlowEvent.decode(raw)
    assert (ev.saddr, ev.sport, ev.daddr, ev.dport) == ("10.99.0.100", 41000, "10.99.0.11", 22)
    assert (ev.src_identity, ev.dst_identity, ev.rule, ev.ifindex) == (2, 1, 5, 3)
    assert (ev.verdict, ev.reason, ev.tcp_flags) == (bpfabi.FLOW_DROPPED, 133, 0x02)



def test_egress_actions_match_the_c_defines(maps_h):
    defines = c_defines(maps_h)
    c_actions = {n: v for n, v in defines.items() if n.startswith("EGW_")}
    assert c_actions == {n: getattr(bpfabi, n) for n in c_actions}
    assert set(bpfabi.EGW_ACTIONS) == set(c_actions.values())


def test_egress_entries_round_trip_and_put_the_pod_before_the_prefix():
    key = bpfabi.EgressKey("10.100.1.5", "203.0.113.0/24")
    assert bpfabi.EgressKey.decode(key.encode()) == key
    # prefixlen 32 + 24, then the pod address, then the destination: the LPM trie matches
    # the pod exactly and the destination by its longest prefix.
    assert key.encode() == (56).to_bytes(4, "little") + bytes([10, 100, 1, 5, 203, 0, 113, 0])
    action = bpfabi.EgressAction(bpfabi.EGW_REDIRECT, "0.0.0.0", "10.99.0.12",
                                 "02:00:0a:63:00:0c")
    assert bpfabi.EgressAction.decode(action.encode()) == action
    assert action.encode()[8:14] == bytes([2, 0, 10, 99, 0, 12]) and action.name == "redirect"
