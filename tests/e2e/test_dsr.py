"""The DSR-asymmetry suite: which way the replies go in each LB mode, proven from captures.

One 3-node local cluster (reused when one named $CNI_HARNESS_CLUSTER, default `lab` + a
suffix unique to the run, already runs; else created and removed). The external client
talks to node1's NodePort (and a LoadBalancer IP routed to node1) of a service whose only
backend runs on node2, while tcpdump captures in node1, node2, the client and the fabric.
The agents' mode is switched by rewriting the module config file every node's agent reads
(what `deploy --config` writes); each agent picks it up live and the suite waits until
every status shows it.

Asserted from the captures and the answers (`cni_harness.evidence.asymmetry`): in DSR, replies
leave node2's uplink straight to the client with node1's address and port, none crosses
node1's uplink, the backend saw the client's address and the first packets carried the DSR
option; in SNAT, replies pass node1 and the backend saw node1's address. Hybrid is TCP as
DSR, UDP as SNAT. Each case's evidence has the packet counts per interface.

On a cluster made with `cni-harness cluster up --source-guard` the DSR cases fail, and the
failure names the cause (asymmetric routing blocked by the fabric's source guard).
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

pytest.importorskip("cni_harness.providers.local.provider",
                    reason="needs the local cluster provider")

from cni_harness.evidence.asymmetry import Flow, Observation, check_dsr, check_snat
from cni_harness.evidence.capture import Captures
from cni_harness.providers.local.addressing import CLIENT_IP
from cni_harness.providers.local.sourceguard import CAUSE as SOURCE_GUARD_CAUSE
from cni_harness.suites.lab import CLIENT, FABRIC, PEER_PORT, node
from cni_harness.testing import keep_cluster, require_provider, suite_cluster_name, suite_lab
from cni_harness.timescale import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER = suite_cluster_name("lab")
KEEP = keep_cluster()
RESULTS_ENV = "CNI_HARNESS_RESULTS_DIR"    # where `cni-harness run` wants evidence files
RECEIVING, BACKEND = "node1", "node2"
HOST_PORT = 8081
TRIES = 4
SETTLE_SECONDS = 0.3        # the last packets of an exchange reach every capture
LB_MODES = {"SNAT": {"TCP": "SNAT", "UDP": "SNAT"}, "DSR": {"TCP": "DSR", "UDP": "DSR"},
            "Hybrid": {"TCP": "DSR", "UDP": "SNAT"}}
CHECKS = {"DSR": check_dsr, "SNAT": check_snat}
AGENT_UNIT = "cni-cilium-agent.service"


def evidence(record_property, **observed) -> None:
    record_property("evidence", json.dumps(observed, sort_keys=True, default=str))


def svc_doc(name: str, selector: dict, ports: list[dict], type: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": type, "selector": selector, "ports": ports}}


WEB_PORTS = [{"name": "http", "port": 80, "targetPort": PEER_PORT, "protocol": "TCP"},
             {"name": "dns", "port": 53, "targetPort": PEER_PORT, "protocol": "UDP"}]
HOST_PORTS = [{"name": "http", "port": 80, "targetPort": HOST_PORT, "protocol": "TCP"}]


class Bed:
    """The suite's cluster: a backend on node2, services, the mode in force, the guard."""

    def __init__(self, lab, backend, host_backend):
        self.lab = lab
        self.provider = lab.provider
        self.backend = backend
        self.host_backend = host_backend
        self.ips = {n.name: n.ip for n in lab.provider.nodes()}
        self.mode = ""
        # Each exchange uses fresh client ports below the ephemeral range, from a random
        # base: a UDP conntrack entry of an earlier run (to a backend since deleted) lives
        # for a minute and would catch a reused 5-tuple.
        self.sport = random.randrange(20000, 28000, 1000)
        self.case = "exchange"  # names the capture files (set per test)
        self.results_dir = os.environ.get(RESULTS_ENV, "")

    def node_port(self, service: str, port_name: str) -> int:
        return next(p["nodePort"] for p in self.lab.service(service)["spec"]["ports"]
                    if p["name"] == port_name)

    def lb_ip(self, service: str) -> str:
        return self.lab.service(service)["status"]["loadBalancer"]["ingress"][0]["ip"]

    def use_mode(self, mode: str) -> None:
        if mode != self.mode:
            self.lab.set_module_config(f"bpfLBMode: {mode}\n", LB_MODES[mode])
            self.mode = mode

    def guard_drops(self) -> dict[str, int] | None:
        """The fabric source guard's drops per node; None when it is off or the provider
        has none (only the local fabric has one)."""
        guard = getattr(self.provider, "source_guard", None)
        return guard() if guard else None

    def observe(self, protocol: str, frontend: tuple[str, int] | None = None,
                backend: tuple[str, int] | None = None, tries: int = TRIES,
                timeout: float = 2.0, size: int | None = None,
                sport: int | None = None) -> Observation:
        """The client's tries to `frontend` (default: node1's NodePort of `dsr-web`) with
        captures on node1, node2, the client and the fabric."""
        port_name = "http" if protocol == "TCP" else "dns"
        frontend = frontend or (self.ips[RECEIVING], self.node_port("dsr-web", port_name))
        backend = backend or (self.backend.ip, PEER_PORT)
        flow = Flow(protocol, CLIENT_IP, frontend, backend, RECEIVING, self.ips[RECEIVING],
                    BACKEND)
        bpf_filter = f"host {CLIENT_IP} or port {backend[1]}"
        caps = [self.lab.capture(node(RECEIVING), bpf_filter),
                self.lab.capture(node(BACKEND), bpf_filter),
                self.lab.capture(CLIENT, bpf_filter), self.lab.capture(FABRIC, bpf_filter)]
        before = self.guard_drops()
        if sport is None:
            self.sport += 50
            sport = self.sport
        with Captures(caps) as running:
            answers = self.lab.probe(CLIENT, protocol, frontend[0], frontend[1], count=tries,
                                     timeout=timeout, size=size, sport=sport)
            time.sleep(SETTLE_SECONDS)
        after = self.guard_drops()
        drops = ({n: c - (before or {}).get(n, 0) for n, c in after.items()}
                 if after is not None else {})
        obs = Observation(flow, running.packets(), answers, drops)
        if self.results_dir:
            prefix = f"{self.case}-{protocol}-{sport}-{int(time.time() * 1000) % 100000}"
            obs.files = running.save(self.results_dir, prefix)
            record = os.path.join(self.results_dir, prefix + ".json")
            with open(record, "w") as fh:
                json.dump(obs.to_record(), fh, indent=1)
            obs.files.append(record)
        return obs


@pytest.fixture(autouse=True)
def _name_captures(request):
    """Capture files are named after the test that made them."""
    if "bed" in request.fixturenames:
        request.getfixturevalue("bed").case = request.node.name.replace("[", "-").rstrip("]")


@pytest.fixture(scope="module")
def bed():
    with suite_lab(CLUSTER, "bpfLBMode: SNAT\n") as lab:
        yield from _bed(lab)


def _bed(lab):
    """The bed on a deployed lab: our pods and services, the LoadBalancer IP routed from the
    client; a cluster that stays is left as found."""
    for rec in lab.pods.list():          # a reused cluster: start from our own pods only
        lab.pods.delete(rec.name, rec.namespace)
    backend = lab.start_peer_pod(BACKEND, "dsr-be", {"app": "dsr-be"})
    host_backend = lab.start_peer_pod(BACKEND, "dsr-host", {"app": "dsr-host"},
                                      host_network=True, port=HOST_PORT)
    services = [svc_doc("dsr-web", {"app": "dsr-be"}, WEB_PORTS, "LoadBalancer"),
                svc_doc("dsr-hostnet", {"app": "dsr-host"}, HOST_PORTS, "NodePort")]
    lab.apply(services)
    lab.wait_programmed("default/dsr-web", {"ClusterIP": 1, "NodePort": 1})
    lab.wait_programmed("default/dsr-hostnet", {"ClusterIP": 1, "NodePort": 1})
    test_bed = Bed(lab, backend, host_backend)
    guard_at_start = test_bed.guard_drops() is not None
    lab.run(CLIENT, ["ip", "route", "replace", f"{test_bed.lb_ip('dsr-web')}/32", "via",
                     test_bed.ips[RECEIVING]], check=True)
    try:
        yield test_bed
    finally:
        if not lab.created or KEEP:          # the cluster stays: leave it as found
            if hasattr(lab.provider, "set_source_guard"):
                lab.provider.set_source_guard(guard_at_start)
            lab.set_module_config("bpfLBMode: SNAT\n")
            lab.delete(services)
            for name in ("dsr-be", "dsr-host"):
                lab.pods.delete(name)


# ---------------------------------------------------------------- asymmetry per mode

CASES = [(mode, proto) for mode in ("SNAT", "DSR", "Hybrid") for proto in ("TCP", "UDP")]


@pytest.mark.parametrize("mode,protocol", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_replies_take_the_path_of_the_lb_mode(bed, record_property, mode, protocol):
    bed.use_mode(mode)
    expected = LB_MODES[mode][protocol]
    obs = bed.observe(protocol)
    problems = CHECKS[expected](obs)
    evidence(record_property, mode=mode, expected=expected, proven=not problems,
             problems=problems, **obs.evidence())
    assert not problems, f"bpfLBMode {mode}, {protocol}: not {expected}: {'; '.join(problems)}"


def test_loadbalancer_ip_answers_by_dsr(bed, record_property):
    bed.use_mode("DSR")
    observed = {proto: bed.observe(proto, frontend=(bed.lb_ip("dsr-web"), port))
                for proto, port in (("TCP", 80), ("UDP", 53))}
    problems = {proto: check_dsr(obs) for proto, obs in observed.items()}
    evidence(record_property, problems=problems,
             **{proto: obs.evidence() for proto, obs in observed.items()})
    assert problems == {"TCP": [], "UDP": []}


def test_the_dsr_checks_fail_when_the_agents_run_snat(bed, record_property):
    """The negative control: the same DSR assertions, on the wire of agents switched to
    SNAT, must fail (and the SNAT ones hold)."""
    bed.use_mode("SNAT")
    observed = {proto: bed.observe(proto) for proto in ("TCP", "UDP")}
    as_dsr = {proto: check_dsr(obs) for proto, obs in observed.items()}
    as_snat = {proto: check_snat(obs) for proto, obs in observed.items()}
    evidence(record_property, dsr_checks_on_snat=as_dsr, snat_checks=as_snat,
             **{proto: obs.evidence()["packetsPerInterface"] for proto, obs in observed.items()})
    for proto in ("TCP", "UDP"):
        assert as_snat[proto] == [], proto
        assert any("reply packets passed the receiving node's uplink" in p
                   for p in as_dsr[proto]), as_dsr[proto]
        assert any(f"not the client {CLIENT_IP}" in p for p in as_dsr[proto]), as_dsr[proto]


# ---------------------------------------------------------------- what DSR cannot serve

def test_host_network_endpoints_are_served_by_snat_and_flagged(bed, record_property):
    bed.use_mode("DSR")
    frontends = [f for f in bed.lab.agent(RECEIVING, "service", "list")["frontends"]
                 if f["service"] == "default/dsr-hostnet"]
    nodeport = next(f for f in frontends if f["type"] == "NodePort")
    log = bed.lab.run(node(RECEIVING), ["grep", "dsr-hostnet",
                                        "/var/log/cni-cilium/agent.log"]).stdout
    obs = bed.observe("TCP", frontend=(bed.ips[RECEIVING], nodeport["frontendPort"]),
                      backend=(bed.ips[BACKEND], HOST_PORT))
    problems = check_snat(obs)
    evidence(record_property, frontend=nodeport, log=log.strip().splitlines()[-1:],
             problems=problems, **obs.evidence())
    assert nodeport["lbMode"] == "SNAT"
    assert "cilium#10789" in (nodeport["lbModeFallback"] or "")
    assert "Service default/dsr-hostnet: endpoints" in log and "cilium#10789" in log
    assert problems == []
    assert {a.get("name") for a in obs.answers} == {"dsr-host"}


def test_oversized_udp_datagram_is_dropped_and_counted(bed, record_property):
    """The option adds 8 bytes: a datagram filling the MTU cannot carry it, and is dropped
    (counted) rather than sent in pieces; one 8 bytes smaller passes."""
    bed.use_mode("DSR")
    sample = 'cni_cilium_datapath_drops_total{reason="dsr_too_big"}'
    before = bed.lab.metric(RECEIVING, sample)
    big = bed.observe("UDP", size=1472, tries=2, timeout=1.0)          # IP length 1500
    fits = bed.observe("UDP", size=1464, tries=2)                      # 1492 + 8
    after = bed.lab.metric(RECEIVING, sample)
    evidence(record_property, drops=[before, after], oversized=big.evidence(),
             fitting=fits.evidence())
    assert len(big.failures) == 2 and after - before == 2
    assert check_dsr(fits) == []


# ---------------------------------------------------------------- backend changes

def test_a_udp_flow_pinned_to_a_deleted_backend_moves_to_its_successor(bed, record_property):
    """A UDP client keeping its port: once its backend pod is replaced (new address), the
    agent drops the conntrack entry pinning the flow to the old one, and the next datagram
    reaches the new backend (by DSR)."""
    bed.use_mode("DSR")
    lab, sport = bed.lab, bed.sport + 25
    before = bed.observe("UDP", tries=1, sport=sport)
    removed_before = lab.agent(RECEIVING, "status")["staleConntrackRemoved"]
    old_ip = bed.backend.ip
    lab.pods.delete("dsr-be")
    bed.backend = lab.start_peer_pod(BACKEND, "dsr-be", {"app": "dsr-be"})
    lab.wait_for("the new backend programmed", lambda: all(
        f["selected"] == [f"{bed.backend.ip}:{PEER_PORT}"]
        for f in lab.agent_view(RECEIVING, "services")["frontends"]
        if f["service"] == "default/dsr-web"))
    after = bed.observe("UDP", tries=1, sport=sport)
    removed = lab.agent(RECEIVING, "status")["staleConntrackRemoved"] - removed_before
    problems = check_dsr(after)
    evidence(record_property, old_backend=old_ip, new_backend=bed.backend.ip,
             stale_entries_removed=removed, problems=problems, before=before.evidence(),
             after=after.evidence())
    assert check_dsr(before) == [] and old_ip != bed.backend.ip
    assert removed >= 1
    assert problems == []


# ---------------------------------------------------------------- restarts

def test_long_lived_dsr_connection_survives_kill_9_of_both_agents(bed, record_property):
    bed.use_mode("DSR")
    # Long enough that the agents are back (6-10 s measured on a loaded 2-core host: bcc
    # compiles at start; 22 s in a TCG guest) and the conntrack entries are read while the
    # stream still runs (another ~8 s in a TCG guest: the stream needs a scaled floor).
    lab, seconds, rate = bed.lab, round(max(30, scaled(10))), 250_000
    stream = lab.stream(CLIENT, bed.ips[RECEIVING], bed.node_port("dsr-web", "http"),
                        seconds, rate, max_seconds=seconds + 60)
    time.sleep(1.5)
    pids = {n: lab.agent(n, "status")["pid"] for n in (RECEIVING, BACKEND)}
    for name, pid in pids.items():
        lab.run(node(name), ["kill", "-9", str(pid)], check=True)
    killed_at = time.monotonic()
    for name, pid in pids.items():
        lab.wait_for(f"{name}'s agent back", lambda n=name, p=pid: lab.agent_view(
            n, "status")["pid"] != p, timeout=40)
    back_s = round(time.monotonic() - killed_at, 2)
    frontend = f"{bed.ips[RECEIVING]}:{bed.node_port('dsr-web', 'http')}"
    service_entries = [e for e in lab.agent(RECEIVING, "bpf", "ct", "list")
                       if e["kind"] == "service" and e["destination"] == frontend
                       and "dsr" in e["flags"] and e["expiresIn"] > 3600]
    reply_entries = [e for e in lab.agent(BACKEND, "bpf", "ct", "list")
                     if e["kind"] == "reply" and e["nat"] == frontend and "dsr" in e["flags"]
                     and e["expiresIn"] > 3600]
    read_while_streaming = stream.poll() is None
    out, err = stream.communicate(timeout=scaled(100))
    evidence(record_property, curl=[stream.returncode, out, err], agents_back_after_s=back_s,
             entries_read_while_streaming=read_while_streaming,
             receiving_node_entries=service_entries, backend_node_entries=reply_entries)
    assert stream.returncode == 0, err
    assert out.split()[:2] == ["200", str(seconds * rate)]
    assert read_while_streaming, f"the stream ended before the agents were back ({back_s} s)"
    assert service_entries, "node1 has no live DSR service entry for the stream"
    assert reply_entries, "node2 has no live DSR reply entry for the stream"


# ---------------------------------------------------------------- anti-spoofing fabric

def test_source_guard_blocks_dsr_and_the_cause_is_named(bed, record_property):
    require_provider(bed.provider, "set_source_guard", "source_guard",
                     why="the fabric's anti-spoofing guard is the local provider's")
    was_on = bed.guard_drops() is not None
    bed.provider.set_source_guard(True)
    try:
        bed.use_mode("DSR")
        blocked = bed.observe("TCP", tries=2, timeout=1.5)
        bed.use_mode("SNAT")
        snat = bed.observe("TCP", tries=2)
    finally:
        bed.provider.set_source_guard(was_on)
    problems = check_dsr(blocked)
    evidence(record_property, dsr_problems=problems, dsr=blocked.evidence(),
             snat_problems=check_snat(snat), snat=snat.evidence())
    assert len(blocked.failures) == 2
    assert any(SOURCE_GUARD_CAUSE in p for p in problems), problems
    assert blocked.guard_drops.get(RECEIVING, 0) > 0
    assert check_snat(snat) == []         # SNAT keeps every source legitimate
