"""The reboot-on-mode-change suite: tunnelMode Disabled -> VXLAN -> Disabled through Ansible.

For each change, three phases on one 3-node cluster (the environment's provider, see
`cni_harness.testing.suite_lab`; local: $CNI_HARNESS_CLUSTER, default `lab` + a suffix
unique to the run, reused when it runs, else created and removed), each
with evidence (every agent's status, a capture summary of the fabric, the pod-to-pod mesh):

1. the config changes, nothing reboots (site.yml with `cni_cilium_tunnel_reboot=false`):
   every agent reports `rebootRequired` with the pending mode, logs it and exposes it as a
   metric; traffic still works in the old mode, which the fabric capture shows;
2. one node (node2) reboots through playbooks/reboot.yml: modes are mixed, and cross-node
   pod traffic between node2 and the others fails while node1 <-> node3 still works. That
   failure is the availability issue the docs warn about; the test passes when it is
   observed, and says so in its evidence;
3. site.yml runs again: it reboots the remaining nodes one at a time (node1 then node3,
   not node2), every agent runs the new mode, the fabric shows VXLAN (UDP to port 8472, our
   VNI, pod addresses only inside) or plain pod addresses (native), and the whole traffic
   suite (tests/e2e/test_traffic.py) passes on the cluster in the new mode.

A node's pods died with it: after each reboot the harness starts them again in new
sandboxes, as a kubelet would (PodRuntime.restart_node).

CNI_HARNESS_SKIP_REBOOT=1 skips every reboot (phase 2 is skipped, site.yml runs with
`cni_cilium_tunnel_reboot=false`): phase 3 then fails, which shows the suite can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("cni_harness.providers.local.provider",
                    reason="needs the local cluster provider")

from cni_harness.deploy.playbook import REBOOT, SITE, run_playbook
from cni_harness.evidence.capture import Captures
from cni_harness.evidence.pcap import summarize
from cni_harness.suites.lab import FABRIC, node, pod
from cni_harness.testing import suite_cluster_name, suite_lab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER = suite_cluster_name("lab")
SKIP_REBOOT = os.environ.get("CNI_HARNESS_SKIP_REBOOT") == "1"
RESULTS_DIR = os.environ.get("CNI_HARNESS_RESULTS_DIR")
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAFFIC_SUITE = os.path.join(PROJECT, "tests", "e2e", "test_traffic.py")

NODES = ("node1", "node2", "node3")
FIRST = "node2"                                   # rebooted alone in phase 2
PODS = {"rb-1": "node1", "rb-2": "node2", "rb-3": "node3"}
POD_CIDR = "10.100.0.0/16"
VXLAN_PORT, VXLAN_VNI = 8472, 1
BOOT_ID = "/proc/sys/kernel/random/boot_id"
REBOOT_TASK = "Reboot the node and wait until it is back"
CAPTURE_FILTER = f"udp port {VXLAN_PORT} or net {POD_CIDR}"
TRANSITIONS = [("Disabled", "VXLAN"), ("VXLAN", "Disabled")]
IDS = [f"{old}-to-{new}" for old, new in TRANSITIONS]


def config(mode: str) -> str:
    return f"bpfLBMode: SNAT\ntunnelMode: {mode}\n"


def evidence(record_property, **observed) -> None:
    record_property("evidence", json.dumps(observed, sort_keys=True, default=str))


class Rig:
    """The cluster and what the phases do to it and observe on it."""

    def __init__(self, lab):
        self.lab = lab
        self.provider = lab.provider

    # ------------------------------------------------------------ changing the cluster
    def deploy(self, playbook: str, mode: str, reboot: bool, **extravars):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            fh.write(config(mode))
        try:
            result = run_playbook(self.provider, playbook, config=fh.name, extravars={
                "cni_cilium_tunnel_reboot": reboot, **extravars})
        finally:
            os.unlink(fh.name)
        assert result.rc == 0, f"{playbook} failed: {result.failed_tasks}"
        return result

    def ensure_pods(self) -> None:
        """Our peer pods, running; anything else (the traffic suite's) removed, so reboots
        restart only what the phases use."""
        mine = set(PODS)
        for rec in self.lab.pods.list():
            if rec.name not in mine:
                self.lab.pods.delete(rec.name, rec.namespace)
        records = {r.name: r for r in self.lab.pods.list()}
        alive = self.lab.pods.running(list(records.values()))
        for name, node_name in PODS.items():
            rec = records.get(name)
            if rec is not None and rec.node == node_name and alive.get(f"default/{name}"):
                continue
            if rec is not None:
                self.lab.pods.delete(name)
            self.lab.start_peer_pod(node_name, name, {"app": "reboot"})

    def restart_pods(self, node_name: str) -> None:
        """What a kubelet does after its node booted: the node's pods again."""
        for rec in self.lab.pods.restart_node(node_name):
            self.lab.wait_for(f"pod {rec.name} answering", lambda rec=rec: "error" not in
                              self.lab.probe(node(rec.node), "tcp", rec.ip, 8080,
                                             timeout=1)[0], timeout=20)

    # ------------------------------------------------------------ observing it
    def statuses(self) -> dict[str, dict]:
        return {n: self.lab.agent(n, "status") for n in NODES}

    def metric(self, node_name: str, sample: str) -> float | None:
        res = self.lab.run(node(node_name), ["curl", "-sS", "--unix-socket",
                                             "/run/cni-cilium/agent.sock",
                                             "http://agent/metrics"], check=True)
        for line in res.stdout.splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return None

    def mesh(self) -> dict[str, str]:
        """Every pod to every other pod over TCP: who answered, or the error."""
        ips = {r.name: r.ip for r in self.lab.pods.list() if r.name in PODS}
        out = {}
        for src in PODS:
            for dst in PODS:
                if src != dst:
                    answer = self.lab.probe(pod(src), "tcp", ips[dst], 8080, timeout=1.5)[0]
                    out[f"{src}->{dst}"] = answer.get("name") or answer.get("error", "?")
        return out

    def captured_mesh(self, label: str) -> tuple[dict, dict]:
        """The mesh while tcpdump watches the fabric: (mesh, capture summary)."""
        # On every port of the fabric: a capture on the bridge itself would miss what it
        # forwards between ports.
        with Captures([self.lab.capture(FABRIC, CAPTURE_FILTER)]) as caps:
            mesh = self.mesh()
            time.sleep(0.3)                        # let the last packets reach the capture
        if RESULTS_DIR:
            caps.save(RESULTS_DIR, f"reboot-{label}")
        return mesh, summarize(caps.packets()["fabric"], POD_CIDR)

    def boot_ids(self) -> dict[str, str]:
        """Each node's boot id as the node itself reports it: new at every boot on any
        provider (a VM's kernel; a namespace node's own, bind-mounted by its init)."""
        return {n: self.lab.run(node(n), ["cat", BOOT_ID], check=True).stdout.strip()
                for n in NODES}


def rebooted(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """The nodes whose boot id changed between two `Rig.boot_ids()`."""
    return {n for n in NODES if after[n] != before[n]}


def boot_id_view(before: dict[str, str], after: dict[str, str]) -> dict[str, dict]:
    """Per node, the kernel's boot id before and after a phase, and whether it changed:
    the evidence that a reboot was a real one."""
    return {n: {"before": before[n], "after": after[n], "changed": after[n] != before[n]}
            for n in NODES}


def status_view(doc: dict) -> dict:
    return {"state": doc.get("state"), "rebootRequired": doc.get("rebootRequired"),
            "modes": {k: doc["modes"].get(k) for k in
                      ("tunnelMode", "tunnelModeConfigured", "tunnelModePending", "lbMode")},
            "tunnel": doc.get("tunnel")}


def assert_wire_shows(mode: str, summary: dict) -> None:
    """The fabric capture proves the mode: VXLAN to our port with our VNI and pod
    addresses only inside, or plain pod addresses and no VXLAN."""
    if mode == "VXLAN":
        assert summary["vxlan"]["packets"] > 0, summary
        assert summary["vxlan"]["ports"] == [VXLAN_PORT], summary
        assert summary["vxlan"]["vnis"] == [VXLAN_VNI], summary
        assert summary["vxlan"]["inner"], summary           # pod addresses inside
        assert summary["plainPod"]["packets"] == 0, summary
    else:
        assert summary["plainPod"]["packets"] > 0, summary
        assert summary["vxlan"]["packets"] == 0, summary


def crosses(pair: str, node_name: str) -> bool:
    """Whether a mesh pair has exactly one end on node_name."""
    src, dst = pair.split("->")
    return (PODS[src] == node_name) != (PODS[dst] == node_name)


@pytest.fixture(scope="module")
def rig():
    with suite_lab(CLUSTER, config(TRANSITIONS[0][0])) as lab:
        r = Rig(lab)
        yield r

@pytest.fixture(autouse=True)
def in_sequence(request):
    """The phases build on each other: after a failure the cluster is not in the state the
    next phase starts from, so the rest is skipped rather than failed again."""
    if request.session.testsfailed:
        pytest.skip("an earlier phase failed; the cluster is not in this phase's start state")


@pytest.fixture(scope="module", params=TRANSITIONS, ids=IDS)
def transition(request) -> tuple[str, str]:
    """(old mode, new mode). Module-scoped, so pytest runs the three phases of one change
    before the next change."""
    return request.param


def test_phase1_config_changed_no_reboot_old_mode_still_works(rig, record_property, transition):
    old, new = transition
    rig.ensure_pods()
    before = rig.boot_ids()
    result = rig.deploy(SITE, new, reboot=False)
    statuses = rig.statuses()
    metrics = {n: {"reboot_required": rig.metric(n, "cni_cilium_reboot_required"),
                   "pending": rig.metric(n, f'cni_cilium_tunnel_mode{{mode="{new}",'
                                            'state="pending_reboot"}')} for n in NODES}
    logs = {n: rig.lab.run(node(n), ["grep", "-m1", "reboot required",
                                     "/var/log/cni-cilium/agent.log"]).stdout.strip()
            for n in NODES}
    mesh, wire = rig.captured_mesh(f"{old}-to-{new}-phase1")
    after = rig.boot_ids()
    evidence(record_property, phase=1, change=f"{old} -> {new}",
             agents={n: status_view(s) for n, s in statuses.items()}, metrics=metrics,
             logs=logs, mesh=mesh, capture=wire, rebooted=result.changed_by(REBOOT_TASK),
             bootIds=boot_id_view(before, after))
    assert after == before, "a node rebooted although the reboot was off"
    for n, doc in statuses.items():
        assert doc["rebootRequired"], (n, status_view(doc))
        assert doc["modes"]["tunnelMode"] == old and doc["modes"]["tunnelModePending"] == new
        assert metrics[n] == {"reboot_required": 1.0, "pending": 1.0}, n
        assert "reboot required" in logs[n], n
    assert set(mesh.values()) <= set(PODS), mesh     # every pair answered, by name
    assert all(mesh[p] == p.split("->")[1] for p in mesh), mesh
    assert_wire_shows(old, wire)


def test_phase2_one_node_rebooted_mixed_modes_break_cross_node_traffic(
        rig, record_property, transition):
    old, new = transition
    if SKIP_REBOOT:
        pytest.skip("CNI_HARNESS_SKIP_REBOOT=1: no node is rebooted")
    before = rig.boot_ids()
    result = rig.deploy(REBOOT, new, reboot=True, reboot_hosts=FIRST)
    rig.restart_pods(FIRST)
    statuses = rig.statuses()
    mesh, wire = rig.captured_mesh(f"{old}-to-{new}-phase2")
    expected_failures = sorted(p for p in mesh if crosses(p, FIRST))
    after = rig.boot_ids()
    evidence(record_property, phase=2, change=f"{old} -> {new}", rebooted=FIRST,
             agents={n: status_view(s) for n, s in statuses.items()}, mesh=mesh,
             capture=wire, reboots=result.changed_by(REBOOT_TASK),
             bootIds=boot_id_view(before, after),
             verdict=(f"expected for the mixed state: {FIRST} runs {new}, the others {old}; "
                      f"cross-node pod traffic between them fails ({len(expected_failures)} "
                      "pairs), the availability issue the docs warn about"))
    assert rebooted(before, after) == {FIRST}, (before, after)
    assert statuses[FIRST]["modes"]["tunnelMode"] == new
    assert not statuses[FIRST]["rebootRequired"]
    for n in NODES:
        if n != FIRST:
            assert statuses[n]["modes"]["tunnelMode"] == old and statuses[n]["rebootRequired"]
    for pair, answer in mesh.items():
        if crosses(pair, FIRST):
            assert answer not in PODS, f"{pair} answered across mixed modes: {answer}"
        else:
            assert answer == pair.split("->")[1], (pair, answer)


def test_phase3_all_rebooted_new_mode_on_the_wire_and_traffic_suite_passes(
        rig, record_property, transition):
    old, new = transition
    before = rig.boot_ids()
    result = rig.deploy(SITE, new, reboot=not SKIP_REBOOT)
    reboots = result.changed_by(REBOOT_TASK)
    for change in reboots:
        rig.restart_pods(change["host"])
    statuses = rig.statuses()
    mesh, wire = rig.captured_mesh(f"{old}-to-{new}-phase3")
    view = {"phase": 3, "change": f"{old} -> {new}", "reboots": reboots,
            "agents": {n: status_view(s) for n, s in statuses.items()}, "mesh": mesh,
            "capture": wire, "skipReboot": SKIP_REBOOT}
    try:
        for n, doc in statuses.items():
            assert doc["modes"]["tunnelMode"] == new and not doc["rebootRequired"], (
                f"{n}: tunnel mode in effect {doc['modes']['tunnelMode']}, expected {new} "
                f"(reboot required: {doc['rebootRequired']}"
                + ("; the reboot step was skipped)" if SKIP_REBOOT else ")"))
        # site.yml rebooted the nodes still in the old mode, one at a time, in order.
        assert [c["host"] for c in reboots] == [n for n in NODES if n != FIRST], reboots
        assert reboots[0]["end"] <= reboots[1]["start"], reboots
        after = rig.boot_ids()
        view["bootIds"] = boot_id_view(before, after)
        assert rebooted(before, after) == set(NODES) - {FIRST}, (before, after)
        assert all(mesh[p] == p.split("->")[1] for p in mesh), mesh
        assert_wire_shows(new, wire)
        view["trafficSuite"] = traffic = run_traffic_suite(new)
        assert traffic["rc"] == 0 and traffic["failures"] == 0 and traffic["passed"] > 0, \
            traffic
    finally:
        evidence(record_property, **view)


def run_traffic_suite(mode: str) -> dict:
    """tests/e2e/test_traffic.py against this cluster in `mode`, in its own pytest."""
    with tempfile.TemporaryDirectory(prefix="cni-reboot-traffic-") as tmp:
        junit = os.path.join(tmp, "junit.xml")
        env = {**os.environ, "CNI_HARNESS_CLUSTER": CLUSTER, "CNI_HARNESS_TUNNEL_MODE": mode,
               "CNI_HARNESS_KEEP": "1"}
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-o", "junit_family=xunit1", f"--junitxml={junit}",
                              TRAFFIC_SUITE], cwd=PROJECT, env=env, capture_output=True,
                             text=True, timeout=1200)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        failed = []
        if os.path.exists(junit):
            root = ET.parse(junit).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in counts}
            failed = [case.get("name") for case in suite.iter("testcase")
                      if case.find("failure") is not None or case.find("error") is not None]
        if RESULTS_DIR:
            with open(os.path.join(RESULTS_DIR, f"traffic-{mode}.log"), "w",
                      encoding="utf-8") as fh:
                fh.write(res.stdout + res.stderr)
    errors = [line for line in res.stdout.splitlines() if line.startswith("E ")][:6]
    bad = counts["failures"] + counts["errors"]
    return {"mode": mode, "rc": res.returncode, "errors": errors, "failures": bad,
            "passed": counts["tests"] - bad - counts["skipped"], "skipped": counts["skipped"],
            "failed": failed, "tail": res.stdout.strip().splitlines()[-1:]}
