"""The LB algorithms in the real programs: packets run through `from_netdev` with
BPF_PROG_TEST_RUN against maps programmed by the agent's own translation (root).

No packet leaves: a test run only returns the program's verdict. What the program chose is
read back from the maps it wrote (conntrack, least-conn counters, affinity entries) and
compared with what the Python side predicts (the Maglev table and flow hash).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from cni_cilium import bpfabi, maglev
from cni_cilium.bpfabi import (
    CT_F_COUNTED,
    CT_SERVICE,
    BackendKey,
    CtEntry,
    CtKey,
    decode_conn_count,
)
from cni_cilium.config import settings_from_mapping
from cni_cilium.datapath import loader
from cni_cilium.datapath.bpfsys import prog_test_run, prog_test_run_skb
from cni_cilium.datapath.frames import (
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    checksums_verify,
    ipv4_tuple,
    tcp_frame,
)
from cni_cilium.datapath.writer import write_ops
from cni_cilium.manifests import Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort
from cni_cilium.translate import DEFAULT_NAT_PORTS, DesiredState, diff_maps, translate

pytestmark = [pytest.mark.probe, pytest.mark.slow]

NODES = [Node("node1", "10.99.0.11", "10.100.1.0/24"), Node("node2", "10.99.0.12",
                                                             "10.100.2.0/24"),
         Node("node3", "10.99.0.13", "10.100.3.0/24")]
NODE_IP, CLIENT = "10.99.0.11", "10.99.0.100"
SETTINGS = settings_from_mapping({"extraLoadBalancerAlgorithmsEnabled": True,
                                  "svcSourceRangeCheck": True, "bpfLBMode": "SNAT"})
TC_ACT_OK, TC_ACT_SHOT = 0, 2
def service(name: str, ip: str, node_port: int, algorithm: str | None = None,
            affinity: int = 0, lb_ip: str | None = None, ranges: tuple = ()) -> Service:
    return Service("default", name, "LoadBalancer" if lb_ip else "NodePort", ip,
                   (ServicePort("http", "TCP", 80, 8080, node_port),), None,
                   session_affinity="ClientIP" if affinity else "None",
                   load_balancer_ips=(lb_ip,) if lb_ip else (), source_ranges=ranges,
                   annotations={"service.cilium.io/lb-algorithm": algorithm} if algorithm
                   else {}, affinity_timeout=affinity or 10800)


def endpoints(name: str, addrs: list[str]) -> EndpointSlice:
    return EndpointSlice("default", f"{name}-1", name, tuple(
        Endpoint((a,), node_name=f"node{a.split('.')[2]}") for a in addrs),
        (EndpointPort("http", 8080, "TCP"),))


MG = [f"10.100.{1 + i % 3}.{10 + i}" for i in range(5)]
LC = ["10.100.1.20", "10.100.2.20", "10.100.3.20"]
AF = ["10.100.1.30", "10.100.2.30", "10.100.3.30"]
OBJECTS = [*NODES,
           service("mg", "10.96.0.10", 30010, "maglev"), endpoints("mg", MG),
           service("lc", "10.96.0.11", 30011, "least-conn"), endpoints("lc", LC),
           service("af", "10.96.0.12", 30012, affinity=60), endpoints("af", AF),
           service("src", "10.96.0.13", 30013, lb_ip="10.97.0.13",
                   ranges=("10.99.0.100/32", "192.0.2.128/25")), endpoints("src", ["10.100.2.40"]),
           service("sn", "10.96.0.14", 30014), endpoints("sn", ["10.100.2.60"])]


@pytest.fixture(scope="module")
def datapath(tmp_path_factory):
    """The real programs and maps in a private bpffs, programmed for node1."""
    bpffs = str(tmp_path_factory.mktemp("bpffs"))
    subprocess.run(["mount", "-t", "bpf", "bpf", bpffs], check=True)
    try:
        dp = loader.load(loader.find_bpf_dir(), pin_root=os.path.join(bpffs, "cni-cilium"),
                         bpffs=bpffs)
        maps = {name: dp.open_map(name) for name in bpfabi.MAP_CAPACITY}
        tr = translate(DesiredState(SETTINGS, "node1", OBJECTS))
        assert tr.problems == [] and tr.warnings == []
        write_ops(maps, diff_maps({}, tr.maps))
        yield dp, maps, tr
        for m in maps.values():
            m.close()
        del dp
    finally:
        subprocess.run(["umount", bpffs], check=True)


def send(datapath, packet: bytes) -> int:
    dp, _maps, _tr = datapath
    retval, _out = prog_test_run(dp.prog_fds["from_netdev"], packet)
    return retval


def chosen(datapath, client: str, sport: int, dst: str, dport: int) -> tuple[str, int, int]:
    """(backend address, port, conntrack flags) of a connection's service entry."""
    _dp, maps, _tr = datapath
    raw = maps["ct4"].lookup(CtKey(client, dst, sport, dport, "TCP", CT_SERVICE).encode())
    assert raw is not None, f"no service entry for {client}:{sport} -> {dst}:{dport}"
    entry = CtEntry.decode(raw)
    return entry.nat_addr, entry.nat_port, entry.flags


def stat(datapath, name: str) -> int:
    _dp, maps, _tr = datapath
    return maps["stats"].percpu_sum_u64(bpfabi.index_key(bpfabi.STAT_NAMES.index(name)))


def active(datapath, addr: str) -> int:
    _dp, maps, _tr = datapath
    raw = maps["lb_conns"].lookup(BackendKey(addr, 8080, "TCP").encode())
    return decode_conn_count(raw) if raw else 0


def test_maglev_picks_what_the_table_and_flow_hash_predict(datapath):
    _dp, _maps, tr = datapath
    selected = next(f.selected for f in tr.frontends if f.service == "default/mg")
    mismatches = []
    for sport in range(40000, 40200):
        send(datapath, tcp_frame(CLIENT, NODE_IP, sport, 30010))
        addr, _port, _flags = chosen(datapath, CLIENT, sport, NODE_IP, 30010)
        predicted = maglev.backend_for_flow(selected, CLIENT, sport, 30010, "TCP")
        if addr != predicted.addr:
            mismatches.append((sport, addr, predicted.addr))
    assert mismatches == []
    assert stat(datapath, "maglev_fallback") == 0


def test_least_conn_sends_new_connections_to_the_backend_with_fewest(datapath):
    _dp, maps, _tr = datapath
    busy = {LC[0]: 5, LC[1]: 0, LC[2]: 7}
    for addr, count in busy.items():
        maps["lb_conns"].update(BackendKey(addr, 8080, "TCP").encode(), bpfabi.conn_count(count))
    picks = []
    for sport in range(41000, 41005):
        send(datapath, tcp_frame(CLIENT, NODE_IP, sport, 30011))
        addr, _port, flags = chosen(datapath, CLIENT, sport, NODE_IP, 30011)
        assert flags & CT_F_COUNTED
        picks.append(addr)
    assert picks == [LC[1]] * 5                      # 0..4 active: still the fewest
    assert [active(datapath, a) for a in LC] == [5, 5, 7]
    # A client's FIN gives the count back, once.
    send(datapath, tcp_frame(CLIENT, NODE_IP, 41000, 30011, TCP_FIN | TCP_ACK))
    send(datapath, tcp_frame(CLIENT, NODE_IP, 41000, 30011, TCP_FIN | TCP_ACK))
    assert [active(datapath, a) for a in LC] == [5, 4, 7]
    assert not chosen(datapath, CLIENT, 41000, NODE_IP, 30011)[2] & CT_F_COUNTED
    # Later packets of an open connection follow conntrack and count nothing more.
    send(datapath, tcp_frame(CLIENT, NODE_IP, 41001, 30011, TCP_ACK))
    assert [active(datapath, a) for a in LC] == [5, 4, 7]


def test_affinity_keeps_a_client_on_its_backend_across_connections(datapath):
    _dp, maps, _tr = datapath
    hits = stat(datapath, "affinity_hit")
    first = None
    for sport in range(42000, 42020):
        send(datapath, tcp_frame(CLIENT, NODE_IP, sport, 30012))
        addr = chosen(datapath, CLIENT, sport, NODE_IP, 30012)[0]
        first = first or addr
        assert addr == first
    assert stat(datapath, "affinity_hit") == hits + 19
    key = bpfabi.AffinityKey(bpfabi.Frontend(NODE_IP, 30012, "TCP"), CLIENT).encode()
    assert bpfabi.Affinity.decode(maps["lb_affinity"].lookup(key)).backend.addr == first
    # Other clients are balanced on their own.
    others = set()
    for i in range(40):
        src = f"10.99.0.{150 + i}"
        send(datapath, tcp_frame(src, NODE_IP, 42100, 30012))
        others.add(chosen(datapath, src, 42100, NODE_IP, 30012)[0])
    assert others == set(AF)


def test_source_ranges_drop_outsiders_and_admit_members_and_cluster_addresses(datapath):
    drops = stat(datapath, "drop_source_range")
    lb_ip = "10.97.0.13"
    for client in (CLIENT, "192.0.2.200", "10.99.0.12", "10.100.3.7"):   # range, range,
        send(datapath, tcp_frame(client, lb_ip, 43000, 80))            # node, pod
        assert chosen(datapath, client, 43000, lb_ip, 80)[0] == "10.100.2.40", client
    for client in ("192.0.2.1", "203.0.113.10", "10.99.0.101"):
        assert send(datapath, tcp_frame(client, lb_ip, 43001, 80)) == TC_ACT_SHOT, client
    assert stat(datapath, "drop_source_range") == drops + 3
    # The node port of the same service is not subject to the ranges (kube-proxy's too).
    send(datapath, tcp_frame("203.0.113.10", NODE_IP, 43002, 30013))
    assert chosen(datapath, "203.0.113.10", 43002, NODE_IP, 30013)[0] == "10.100.2.40"


def test_maglev_tables_are_identical_on_every_node_but_for_locality():
    per_node = {}
    for name in ("node1", "node3"):
        tr = translate(DesiredState(SETTINGS, name, OBJECTS))
        chunks = {k: v for k, v in tr.maps["lb_maglev"].items()}
        per_node[name] = [
            (b.addr, b.port) if b else None for _k, raw in sorted(chunks.items())
            for b in bpfabi.decode_maglev_chunk(raw)]
    assert per_node["node1"] == per_node["node3"]


def test_program_runs_count_each_packet_and_its_time_while_stats_are_on(datapath):
    """What the agent's status reports per program: the kernel's run counters, which move
    only while kernel.bpf_stats_enabled is 1 (the benchmark turns it on)."""
    dp, _maps, _tr = datapath
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(stats_path, encoding="ascii") as fh:
        was = fh.read().strip()
    before = dp.program_runs()
    assert set(before) == set(dp.prog_fds) and all(r["id"] > 0 for r in before.values())
    try:
        with open(stats_path, "w", encoding="ascii") as fh:
            fh.write("1")
        for sport in range(40000, 40010):
            send(datapath, tcp_frame(CLIENT, NODE_IP, sport, 30010))
    finally:
        with open(stats_path, "w", encoding="ascii") as fh:
            fh.write(was)
    after = dp.program_runs()
    assert after["from_netdev"]["runCount"] - before["from_netdev"]["runCount"] == 10
    assert after["from_netdev"]["runTimeNs"] > before["from_netdev"]["runTimeNs"]
    assert after["to_container"]["runCount"] == before["to_container"]["runCount"]


def test_snat_rewrites_both_ends_of_a_request_and_of_its_reply_with_valid_checksums(datapath):
    dp, _maps, _tr = datapath
    nat_min, nat_max = DEFAULT_NAT_PORTS
    _r, request = prog_test_run(dp.prog_fds["from_netdev"], tcp_frame(
        CLIENT, NODE_IP, 41000, 30014, TCP_SYN, b"GET / HTTP/1.1"))
    src, nat_port, dst, dport = ipv4_tuple(request)
    assert (src, dst, dport) == (NODE_IP, "10.100.2.60", 8080)
    assert nat_min <= nat_port <= nat_max and checksums_verify(request)
    _r, reply = prog_test_run(dp.prog_fds["from_netdev"], tcp_frame(
        "10.100.2.60", NODE_IP, 8080, nat_port, TCP_SYN | TCP_ACK, b"HTTP/1.1 200 OK"))
    assert ipv4_tuple(reply) == (NODE_IP, 30014, CLIENT, 41000)
    assert checksums_verify(reply)


def test_to_netdev_leaves_a_translated_packet_alone_and_clears_its_mark(datapath):
    dp, _maps, _tr = datapath
    to_world = tcp_frame("10.100.1.5", "198.51.100.7", 42000, 443, TCP_SYN)
    masqueraded = prog_test_run_skb(dp.prog_fds["to_netdev"], to_world)
    assert masqueraded.retval == TC_ACT_OK and ipv4_tuple(masqueraded.packet)[0] == NODE_IP
    marked = prog_test_run_skb(dp.prog_fds["to_netdev"], to_world,
                               mark=bpfabi.MARK_TRANSLATED)
    assert (marked.retval, marked.packet, marked.mark) == (TC_ACT_OK, to_world, 0)
