"""The egress suite: Egress Gateway in both modes, with failover, with real packets.

One 3-node local cluster ($CNI_HARNESS_CLUSTER, reused when running, else one named for
this run, created and removed), native routing unless $CNI_HARNESS_TUNNEL_MODE says VXLAN.
Two EgressGateways select the workers (node2, node3): `egw-basic`
(PrimaryIPFromEgressGatewayNodeInterface, eth0) and `egw-vip` (VirtualIPAddress
10.99.0.250, on the node network, announced by ARP). Their policies send the traffic of
pods labelled egress=basic (namespace default) and egress=vip to the world subnet
203.0.113.0/24, except 203.0.113.128/25. Every node runs one pod of each kind (b-N, v-N),
node1 also an unlabelled pod and an egress=basic pod in another namespace. The world host
(203.0.113.10, and 203.0.113.200 in the excluded range) and the external client
(10.99.0.100, not a destination) run the peer server, which reports the source address it
saw.

Failover cases stop (then start) or reboot the active node of one gateway while a pod on
node1 makes a request every 0.2 s to the world; the figures (time from taking the node down
to the first request through the new gateway, longest run of failures, failures during the
node's return) are attached as evidence, never asserted on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

pytest.importorskip("cni_harness.providers.local.provider",
                    reason="needs the local cluster provider")

from cni_harness.providers.local.addressing import CLIENT_IP, WORLD_IP
from cni_harness.suites.failover import Phase, failover_figures, parse_loop
from cni_harness.suites.lab import (
    AGENT_CLI,
    CLIENT,
    FABRIC,
    WORLD,
    LabError,
    node,
    pod,
    progress_log,
)
from cni_harness.testing import (
    require_provider,
    suite_cluster_name,
    suite_lab,
    suite_tunnel_mode,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER = suite_cluster_name("egw")
try:
    TUNNEL_MODE = suite_tunnel_mode()
except ValueError as exc:
    raise pytest.UsageError(str(exc)) from exc
CONFIG = f"tunnelMode: {TUNNEL_MODE}\n"
API = "network.deckhouse.io/v1alpha1"
VIP = "10.99.0.250"
EXCLUDED_WORLD_IP = "203.0.113.200"          # inside excludedCIDRs 203.0.113.128/25
WORKERS = ("node2", "node3")
GATEWAY = {"basic": "egw-basic", "vip": "egw-vip"}
AGENT_SOCKET = "/run/cni-cilium/agent.sock"
LOOP_INTERVAL = 0.2
LOOP_TIMEOUT = 1.0
LOOP_MAX_SECONDS = 280          # the loop's own bound; the test ends it sooner


def evidence(record_property, **observed) -> None:
    record_property("evidence", json.dumps(observed, sort_keys=True, default=str))


def gateway_doc(name: str, source_ip: dict) -> dict:
    return {"apiVersion": API, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"nodeSelector": {"node-role.kubernetes.io/worker": ""},
                     "sourceIP": source_ip}}


def policy_doc(name: str, gateway: str, match_labels: dict, excluded=()) -> dict:
    spec = {"egressGatewayName": gateway, "destinationCIDRs": ["203.0.113.0/24"],
            "selectors": [{"podSelector": {"matchLabels": match_labels}}]}
    if excluded:
        spec["excludedCIDRs"] = list(excluded)
    return {"apiVersion": API, "kind": "EgressGatewayPolicy", "metadata": {"name": name},
            "spec": spec}


OBJECTS = [
    gateway_doc("egw-basic", {"mode": "PrimaryIPFromEgressGatewayNodeInterface",
                              "primaryIPFromEgressGatewayNodeInterface": {
                                  "interfaceName": "eth0"}}),
    gateway_doc("egw-vip", {"mode": "VirtualIPAddress", "virtualIPAddress": {"ip": VIP}}),
    policy_doc("egp-basic", "egw-basic", {"egress": "basic",
                                          "io.kubernetes.pod.namespace": "default"},
               excluded=["203.0.113.128/25"]),
    policy_doc("egp-vip", "egw-vip", {"egress": "vip"}),
]


def lowest_hash(gateway: str, nodes) -> str:
    return min(nodes, key=lambda n: hashlib.sha256(f"{gateway}#{n}".encode()).hexdigest())


class Cluster:
    def __init__(self, lab):
        self.lab = lab
        self.nodes = {n.name: n for n in lab.provider.nodes()}

    def ip(self, node_name: str) -> str:
        return self.nodes[node_name].ip

    def status(self, mode: str) -> dict:
        return self.lab.egress_status(GATEWAY[mode])

    def settled(self, mode: str, active: str | None = None, ready=WORKERS,
                timeout: float = 60) -> dict:
        """Until every agent agrees on the gateway's active node (`active` when given) with
        exactly `ready` eligible, and in VIP mode the VIP is announced by it."""
        want_reason = "ElectionSucceedAndVirtualIPAnnounced" if mode == "vip" else \
            "ElectionSucceed"

        def check():
            st = self.status(mode)
            ok = (st["agree"] and not st["unreachable"] and st["activeNodeName"]
                  and (active is None or st["activeNodeName"] == active)
                  and sorted(st["readyNodes"]) == sorted(ready)
                  and all(v["reason"] == want_reason for v in st["byNode"].values()))
            return st if ok else None
        return self.lab.wait_for(f"{GATEWAY[mode]} settled", check, timeout=timeout)

    def agent_egress(self, node_name: str) -> dict:
        res = self.lab.run(node(node_name), ["curl", "-sS", "--unix-socket", AGENT_SOCKET,
                                             "http://agent/egress"], timeout=10)
        return json.loads(res.stdout)

    def mac(self, node_name: str) -> str:
        return self.agent_egress("node1")["health"]["peers"][node_name]["mac"]

    def world_peers(self, where, host: str = WORLD_IP, protocol: str = "tcp",
                    count: int = 3) -> list[str]:
        return [a.get("peer", a.get("error")) for a in
                self.lab.probe(where, protocol, host, 8080, count=count)]


@pytest.fixture(scope="module")
def cluster():
    results = os.environ.get("CNI_HARNESS_RESULTS_DIR")
    progress = progress_log(os.path.join(results, "lab-progress.log") if results else None)
    with suite_lab(CLUSTER, CONFIG, progress=progress) as lab:
        for rec in lab.pods.list():
            lab.pods.delete(rec.name, rec.namespace)
        lab.delete([doc for key, doc in lab.api.objects().items()
                    if key[0] in ("EgressGateway", "EgressGatewayPolicy")])
        servers = []
        try:
            lab.run(WORLD, ["ip", "addr", "replace", f"{EXCLUDED_WORLD_IP}/24", "dev", "eth0"],
                    check=True)
            for where, name in ((WORLD, "world"), (CLIENT, "client")):
                servers.append(lab.popen(where, ["python3", lab.tool(where, "peer_server.py"),
                                                 "--name", name, "--port", "8080"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for i in (1, 2, 3):
                lab.start_peer_pod(f"node{i}", f"b-{i}", {"egress": "basic"})
                lab.start_peer_pod(f"node{i}", f"v-{i}", {"egress": "vip"})
            lab.start_peer_pod("node1", "plain-1", {"app": "plain"})
            lab.start_peer_pod("node1", "b-other", {"egress": "basic"}, namespace="other")
            lab.apply(OBJECTS)
            progress("egress objects applied")
            yield Cluster(lab)
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=10)
            with contextlib.suppress(LabError, subprocess.SubprocessError):
                lab.run(WORLD, ["ip", "addr", "del", f"{EXCLUDED_WORLD_IP}/24", "dev", "eth0"])


# ---------------------------------------------------------------- objects and election

def test_every_agent_elects_the_lowest_hash_and_reports_the_status(cluster, record_property):
    basic = cluster.settled("basic")
    vip = cluster.settled("vip")
    cli = cluster.lab.run(node("node1"), [AGENT_CLI, "egress", "list"], check=True).stdout
    metrics = cluster.lab.metrics("node1")
    evidence(record_property, basic=basic, vip=vip, cli=cli.splitlines(),
             metrics={k: v for k, v in metrics.items() if "egress" in k})
    # The gateways were (re)created by the fixture: no incumbent, so the lowest sha256 of
    # <gateway>#<node> among the eligible workers, on every node.
    for mode, st in (("basic", basic), ("vip", vip)):
        assert st["agree"] and set(st["readyNodes"]) == set(WORKERS), st
        assert st["activeNodeName"] == lowest_hash(GATEWAY[mode], WORKERS), st
    assert basic["conditions"][0]["reason"] == "ElectionSucceed"
    assert basic["egressIP"] == cluster.ip(basic["activeNodeName"])
    assert vip["conditions"][0] == {
        "type": "Ready", "status": "True", "reason": "ElectionSucceedAndVirtualIPAnnounced",
        "message": f"node {vip['activeNodeName']} is active and announces {VIP}"}
    assert "egw-vip" in cli and VIP in cli and "egp-basic" in cli
    assert metrics[f'cni_cilium_egress_gateway_active{{gateway="egw-basic",'
                   f'node="{basic["activeNodeName"]}"}}'] == 1


def test_invalid_objects_are_refused_by_field_and_a_policy_without_gateway_is_reported(
        cluster, record_property):
    lab = cluster.lab
    bad = [gateway_doc("egw-bad", {"mode": "VirtualIP", "virtualIPAddress": {"ip": VIP}}),
           policy_doc("egp-bad", "egw-basic", {"egress": "basic"}, excluded=["10.0.0.1/8"])]
    report = lab.api.apply(bad, "test")
    orphan = policy_doc("egp-orphan", "egw-missing", {"egress": "basic"})
    lab.apply([orphan])
    try:
        problems = lab.wait_for("the orphan policy in node1's status", lambda: [
            p for p in lab.agent_view("node1", "status")["problems"] if "egp-orphan" in p])
        still = cluster.world_peers(pod("b-1"))
    finally:
        lab.delete([orphan])
    evidence(record_property, refused=report.problems, agent_problems=problems, still=still)
    assert report.problems == [
        "EgressGateway egw-bad: spec.sourceIP.mode: invalid value 'VirtualIP'; allowed: "
        "PrimaryIPFromEgressGatewayNodeInterface, VirtualIPAddress",
        "EgressGatewayPolicy egp-bad: spec.excludedCIDRs[0]: invalid IPv4 CIDR '10.0.0.1/8'"]
    assert report.applied == []
    assert problems == ["EgressGatewayPolicy egp-orphan: spec.egressGatewayName: no usable "
                        "EgressGateway 'egw-missing'; not applied"]
    active = cluster.status("basic")["activeNodeName"]
    assert still == [cluster.ip(active)] * 3       # the running gateway is untouched


# ---------------------------------------------------------------- the source the world sees

def test_matching_pods_on_every_node_leave_with_the_gateways_primary_ip(
        cluster, record_property):
    active = cluster.settled("basic")["activeNodeName"]
    seen = {f"b-{i}": {"tcp": cluster.world_peers(pod(f"b-{i}")),
                       "udp": cluster.world_peers(pod(f"b-{i}"), protocol="udp")}
            for i in (1, 2, 3)}
    counters = cluster.lab.datapath_counters()
    evidence(record_property, active=active, seen=seen, counters=counters)
    for name, by_proto in seen.items():
        for proto, peers in by_proto.items():
            assert peers == [cluster.ip(active)] * 3, (name, proto)
    # The pods' own nodes sent them to the gateway unmasqueraded; the gateway SNATed them.
    assert counters["node1"].get('cni_cilium_datapath_events_total{event="egw_redirect"}')
    assert counters[active].get('cni_cilium_datapath_events_total{event="egw_snat_new"}')


def test_matching_pods_on_every_node_leave_with_the_vip_announced_by_the_active_node(
        cluster, record_property):
    active = cluster.settled("vip")["activeNodeName"]
    seen = {f"v-{i}": {"tcp": cluster.world_peers(pod(f"v-{i}")),
                       "udp": cluster.world_peers(pod(f"v-{i}"), protocol="udp")}
            for i in (1, 2, 3)}
    router_mac = cluster.lab.neighbour_mac(FABRIC, VIP)
    addresses = {n: cluster.lab.run(node(n), ["ip", "-br", "addr"]).stdout for n in WORKERS}
    evidence(record_property, active=active, seen=seen, router_neighbour=router_mac,
             active_mac=cluster.mac(active), node_addresses=addresses)
    for name, by_proto in seen.items():
        for proto, peers in by_proto.items():
            assert peers == [VIP] * 3, (name, proto)
    assert router_mac == cluster.mac(active)
    assert all(VIP not in text for text in addresses.values())   # on no interface


def test_other_pods_destinations_and_excluded_cidrs_keep_the_pods_node_ip(
        cluster, record_property):
    lab = cluster.lab
    observed = {
        "unselected pod -> world": cluster.world_peers(pod("plain-1")),
        "pod of another namespace -> world": cluster.world_peers(pod("other/b-other")),
        "selected pod -> client (not a destination)": cluster.world_peers(pod("b-1"),
                                                                          host=CLIENT_IP),
        "selected pod -> excluded CIDR": cluster.world_peers(pod("b-1"),
                                                             host=EXCLUDED_WORLD_IP),
        "selected pod -> excluded CIDR (vip policy has none)": cluster.world_peers(
            pod("v-1"), host=EXCLUDED_WORLD_IP),
    }
    b2 = lab.pods.get("default", "b-2")
    inside = lab.probe(pod("b-1"), "tcp", b2.ip, 8080, count=2)
    b1 = lab.pods.get("default", "b-1")
    evidence(record_property, observed=observed, pod_to_pod=inside)
    node1 = cluster.ip("node1")
    for label, peers in list(observed.items())[:4]:
        assert peers == [node1] * 3, label
    assert observed["selected pod -> excluded CIDR (vip policy has none)"] == [VIP] * 3
    assert [a.get("peer") for a in inside] == [b1.ip] * 2       # inside the cluster: as is


# ---------------------------------------------------------------- failover

class PathWatcher:
    """Polls, every 0.1 s, node1's elected active node and the router's neighbour entry for
    the VIP; records when each first shows the new gateway."""

    def __init__(self, cluster: Cluster, mode: str, new: str):
        self.cluster, self.mode, self.new = cluster, mode, new
        self.new_mac = cluster.mac(new)
        self.node1_at: float | None = None
        self.router_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PathWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            with contextlib.suppress(Exception):
                if self.node1_at is None:
                    gw = next(g for g in self.cluster.agent_egress("node1")["gateways"]
                              if g["name"] == GATEWAY[self.mode])
                    if gw["status"]["activeNodeName"] == self.new:
                        self.node1_at = now
                if self.mode == "vip" and self.router_at is None and \
                        self.cluster.lab.neighbour_mac(FABRIC, VIP) == self.new_mac:
                    self.router_at = now
            self._stop.wait(0.1)

    @property
    def switched_at(self) -> float | None:
        """When traffic from node1 can only go through the new gateway."""
        if self.node1_at is None or (self.mode == "vip" and self.router_at is None):
            return None
        return max(self.node1_at, self.router_at or 0.0)


class RequestLoop:
    """tools/probe.py loop in a pod; its lines are read as they come."""

    def __init__(self, lab, where, host: str):
        self.proc = lab.popen(where, ["python3", lab.tool(where, "probe.py"), "loop", host,
                                      "8080", "--seconds", str(LOOP_MAX_SECONDS),
                                      "--interval", str(LOOP_INTERVAL),
                                      "--timeout", str(LOOP_TIMEOUT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        self.text: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.text.append(line)

    def lines(self) -> list[dict]:
        return parse_loop("".join(self.text))

    def stop(self) -> list[dict]:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()          # the loop ends at its next request
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        return self.lines()


@pytest.mark.parametrize("event", ["stop", "reboot"])
@pytest.mark.parametrize("mode", ["basic", "vip"])
def test_traffic_follows_the_new_gateway_when_the_active_node_goes_down(
        cluster, mode, event, record_property):
    lab = cluster.lab
    if event == "stop":
        require_provider(lab.provider, "stop_node", "start_node",
                         why="powering a node off and on again is the local provider's")
    old = cluster.settled(mode)["activeNodeName"]
    new = next(n for n in WORKERS if n != old)
    new_source = VIP if mode == "vip" else cluster.ip(new)
    loop = RequestLoop(lab, pod(f"{mode[0]}-1"), WORLD_IP)
    marks: dict[str, float] = {}
    try:
        with PathWatcher(cluster, mode, new) as watcher:
            lab.wait_for("the loop's first answers", lambda: len(
                [x for x in loop.lines() if "peer" in x]) >= 3, timeout=20)
            marks["event"] = time.time()
            if event == "stop":
                lab.provider.stop_node(old)
            else:
                lab.provider.reboot(old)
            marks["down"] = time.time()
            moved = lab.wait_for(f"{GATEWAY[mode]} on {new}", lambda: (
                lambda st: st if st["activeNodeName"] == new and st["agree"] else None)(
                    cluster.status(mode)), timeout=30)
            lab.wait_for("traffic through the new gateway", lambda: watcher.switched_at,
                         timeout=30)
            marks["switched"] = watcher.switched_at
            router_after = lab.neighbour_mac(FABRIC, VIP) if mode == "vip" else None
            if event == "stop":
                lab.provider.start_node(old)
            lab.pods.restart_node(old)
            marks["returned"] = time.time()
            final = cluster.settled(mode, ready=WORKERS, timeout=120)
            marks["ready again"] = time.time()
            time.sleep(3)
    finally:
        lines = loop.stop()
    marks["end"] = time.time()
    def through_new(line: dict) -> bool:
        """Basic: the new gateway's IP. VIP: the same source either way, so a request that
        started once node1 and the router both point at the new node."""
        return line["peer"] == new_source and (mode != "vip" or line["start"] >= marks[
            "switched"])

    figures = failover_figures(lines, marks["event"], through_new, [
        Phase("before", 0, marks["event"]),
        Phase("failover", marks["event"], marks["returned"]),
        Phase("return", marks["returned"], marks["ready again"]),
        Phase("after", marks["ready again"], marks["end"])])
    node1_view = cluster.agent_egress("node1")
    gw_view = next(g for g in node1_view["gateways"] if g["name"] == GATEWAY[mode])
    detected = gw_view["lastMove"]["at"] - marks["event"] if gw_view["lastMove"] else None
    evidence(record_property, mode=mode, event=event, old=old, new=new,
             failoverSeconds=figures["switchedAfter"],
             agentDetectedSeconds=round(detected, 2) if detected else None,
             downSeconds=round(marks["down"] - marks["event"], 2), figures=figures,
             moved=moved, final=final, router_mac_after=router_after,
             new_mac=watcher.new_mac, marks={k: round(v - marks["event"], 2)
                                              for k, v in marks.items()},
             watcher={"node1": watcher.node1_at and round(watcher.node1_at - marks["event"], 2),
                      "router": watcher.router_at and round(watcher.router_at - marks["event"],
                                                            2)},
             failed_requests=[x for x in lines if "error" in x][:40])
    print(f"egress failover {mode}/{event}: first request through {new} "
          f"{figures['switchedAfter']} s after taking {old} down; longest outage "
          f"{figures['longestOutage']} s; failed during the return "
          f"{figures['return']['failed']}/{figures['return']['requests']}")
    assert figures["before"]["peers"] == [VIP if mode == "vip" else cluster.ip(old)]
    assert moved["activeNodeName"] == new
    if mode == "vip":
        assert router_after == watcher.new_mac       # the VIP moved to the new node's MAC
    assert figures["switchedAfter"] is not None, figures   # traffic followed the role
    # The old node is back and eligible, but the role stays where it is (no second move)...
    assert final["activeNodeName"] == new and sorted(final["readyNodes"]) == list(WORKERS)
    # ...and requests after its return go through with the gateway's source.
    assert figures["after"]["requests"] >= 5 and figures["after"]["failed"] == 0, figures
    assert figures["after"]["peers"] == [new_source]


def test_the_vip_moves_when_only_the_active_nodes_agent_dies(cluster, record_property):
    """The node stays up, its agent is killed (nodeinit starts it again): its peers stop
    seeing its health document, elect the other worker, which takes the VIP over."""
    lab = cluster.lab
    old = cluster.settled("vip")["activeNodeName"]
    new = next(n for n in WORKERS if n != old)
    pid = cluster.lab.agent(old, "status")["pid"]
    killed_at = time.time()
    lab.run(node(old), ["kill", "-9", str(pid)], check=True)
    moved = lab.wait_for(f"egw-vip on {new}", lambda: (
        lambda st: st if st["activeNodeName"] == new and st["agree"] else None)(
            cluster.status("vip")), timeout=60)
    moved_after = time.time() - killed_at
    through = cluster.world_peers(pod("v-1"))       # replies to the VIP: the router ARPs
    router = lab.neighbour_mac(FABRIC, VIP)
    back = cluster.settled("vip", timeout=120)       # the restarted agent is ready again
    after = cluster.world_peers(pod("v-1"))
    last_move = next(g for g in cluster.agent_egress("node1")["gateways"]
                     if g["name"] == "egw-vip")["lastMove"]
    evidence(record_property, old=old, new=new, moved=moved, router_mac=router,
             node1_moved_after_seconds=round(last_move["at"] - killed_at, 2),
             all_agree_seen_after_seconds=round(moved_after, 2), through_new=through,
             back=back, after_return=after)
    assert moved["activeNodeName"] == new and router == cluster.mac(new)
    assert through == [VIP] * 3
    assert back["activeNodeName"] == new                 # no move back
    assert after == [VIP] * 3

