"""The kernel suite: what the running kernel lets the datapath do, judged against matrix.yaml.

It runs on whatever kernel it finds itself on: this host, or a qemu guest started by
`cni-harness matrix run` / `repro` (which names the matrix entry in
CNI_HARNESS_MATRIX_ENTRY; otherwise the entry is found from `uname -r`).

- live preflight with default settings gets the verdict the matrix expects;
- each probe program of bpf/kernel_features.c (one helper that appeared in a known
  release) is accepted or refused by this kernel's verifier as the entry's `bpf_features`
  say: refused where expected is `expected-unsupported` (pytest.xfail), accepted there fails;
- a tc program compiled here counts real packets sent between two namespaces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from cni_harness.entryjob import ENTRY_ENV
from cni_harness.matrix import KernelEntry, load_matrix

pytestmark = pytest.mark.e2e

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURES_SOURCE = os.path.join(HERE, "bpf", "kernel_features.c")
RELEASE = os.uname().release
MATRIX = load_matrix()


def feature_names(source: str = FEATURES_SOURCE) -> list[str]:
    """The features probed: every `probe_<feature>` program of the source."""
    with open(source, encoding="utf-8") as fh:
        return re.findall(r"^int probe_(\w+)\(", fh.read(), re.M)


FEATURES = feature_names()


def matrix_entry() -> KernelEntry | None:
    """The kernel entry this run belongs to; None for a kernel the matrix does not know."""
    name = os.environ.get(ENTRY_ENV)
    if name:
        try:
            return MATRIX.kernel_entry(name)
        except KeyError:
            return None
    return MATRIX.entry_for_kernel(RELEASE)


ENTRY = matrix_entry()


def evidence(record_property, **data) -> None:
    record_property("evidence", json.dumps(data, sort_keys=True))


@pytest.fixture(scope="module")
def features_bpf():
    """The probe source compiled once with bcc (compiling is the slow part under TCG)."""
    from bcc import BPF

    started = time.monotonic()
    bpf = BPF(src_file=FEATURES_SOURCE.encode())
    bpf.compile_seconds = time.monotonic() - started
    yield bpf
    bpf.cleanup()


def load_program(bpf, name: str) -> tuple[bool, str]:
    """Load one program as SCHED_CLS; on refusal return the verifier's last words.

    bcc prints the verifier log on the process's stderr, so it is captured at fd level.
    """
    from bcc import BPF

    with tempfile.TemporaryFile(mode="w+b") as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            fn = bpf.load_func(name.encode(), BPF.SCHED_CLS)
            return True, f"loaded (fd {fn.fd})"
        except Exception as exc:
            os.dup2(saved, 2)
            capture.seek(0)
            log = capture.read().decode("utf-8", "replace").strip().splitlines()
            # The verdict and bcc's hint, not the instruction trace or the statistics.
            lines = [ln for ln in log if ln.strip() and not ln.startswith("processed ")
                     and not ln[:1].isdigit() and not ln.startswith(";")][-2:]
            return False, " / ".join(lines) or str(exc)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def test_preflight_matches_matrix(record_property, tmp_path):
    config = tmp_path / "default.yaml"
    config.write_text(yaml.safe_dump(MATRIX.profiles["default"] or {}))
    cli = os.path.join(os.path.dirname(sys.executable), "cni-cilium")
    res = subprocess.run([cli, "preflight", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(res.stdout)
    evidence(record_property, kernelRelease=report["kernelRelease"],
             supported=report["supported"], entry=ENTRY.name if ENTRY else None,
             checks=[f"{c['status']} {c['name']}: {c['message']}" for c in report["checks"]])
    assert report["kernelRelease"] == RELEASE
    assert report["liveProbes"] is True
    assert res.returncode == (0 if report["supported"] else 1)
    expected = ENTRY.expect.get("default") if ENTRY else None
    refused = "; ".join(c["message"] for c in report["checks"] if c["status"] == "fail")
    if expected == "unsupported":
        assert not report["supported"], f"{ENTRY.name}: accepted, matrix expects unsupported"
        pytest.xfail(f"kernel {RELEASE} refused as the matrix expects: {refused}")
    assert report["supported"], f"kernel {RELEASE} refused: {refused}"


@pytest.mark.parametrize("feature", FEATURES)
def test_bpf_feature_matches_matrix(feature, features_bpf, record_property):
    loaded, detail = load_program(features_bpf, f"probe_{feature}")
    expected = ENTRY.bpf_features.get(feature) if ENTRY else None
    evidence(record_property, kernelRelease=RELEASE, entry=ENTRY.name if ENTRY else None,
             feature=feature, expected=expected, loaded=loaded, verifier=detail,
             compileSeconds=round(features_bpf.compile_seconds, 1))
    if expected is None:
        if not loaded:
            pytest.skip(f"matrix.yaml has no expectation for {feature} on {RELEASE}; "
                        f"the verifier refused it: {detail}")
        return
    if expected == "unsupported":
        assert not loaded, (f"kernel {RELEASE} accepted probe_{feature}, but matrix.yaml "
                            f"({ENTRY.name}) expects it unsupported")
        pytest.xfail(f"kernel {RELEASE} lacks bpf_{feature}: {detail}")
    assert loaded, f"kernel {RELEASE} refused probe_{feature}: {detail}"


def _ns(name: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True,
                          text=True, timeout=30, check=False, **kwargs)


RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 5000))
sock.settimeout(5)
print("ready", flush=True)
got = 0
try:
    while got < int(sys.argv[2]):
        sock.recv(64)
        got += 1
except OSError:
    pass
print(got, flush=True)
"""

SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    sock.sendto(b"probe", (sys.argv[1], 5000))
    time.sleep(0.02)
"""


def test_tc_program_counts_real_packets(features_bpf, record_property):
    from pyroute2 import NetNS

    count = 20
    side_a, side_b = f"qmk{os.getpid()}a", f"qmk{os.getpid()}b"
    addr_a, addr_b = "198.18.0.1", "198.18.0.2"
    fn = features_bpf.load_func(b"count_packets", features_bpf.SCHED_CLS)
    try:
        for name in (side_a, side_b):
            subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", side_a, "link", "add", "vk0", "type", "veth", "peer",
                        "name", "vk1", "netns", side_b], check=True)
        for ns, dev, addr in ((side_a, "vk0", addr_a), (side_b, "vk1", addr_b)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        with NetNS(side_a) as ns:
            index = ns.link_lookup(ifname="vk0")[0]
            ns.tc("add", "clsact", index)
            ns.tc("add-filter", "bpf", index, ":1", fd=fn.fd, name=fn.name,
                  parent="ffff:fff2", classid=1, direct_action=True)
        receiver = subprocess.Popen(["ip", "netns", "exec", side_a, sys.executable, "-c",
                                     RECEIVER, addr_a, str(count)],
                                    stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        sent = _ns(side_b, sys.executable, "-c", SENDER, addr_a, str(count))
        received = int(receiver.communicate(timeout=30)[0].strip() or 0)
        counted = features_bpf[b"packet_count"][0].value
        evidence(record_property, kernelRelease=RELEASE, sent=count, received=received,
                 countedOnIngressOfVk0=counted)
        assert sent.returncode == 0, sent.stderr
        assert received == count
        # Every datagram passed the program on its way in (ARP adds a few more).
        assert counted >= count
    finally:
        for name in (side_a, side_b):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_local_cluster_runs_on_this_kernel(record_property):
    """The local provider (namespace nodes, overlays, bridge fabric, sshd per node) comes up
    on this kernel and one node reaches another's sshd over the fabric."""
    cli = os.path.join(os.path.dirname(sys.executable), "cni-harness")
    name = "qmkernel"

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], capture_output=True, text=True, timeout=600,
                              check=False)

    started = time.monotonic()
    up = harness("cluster", "up", "--name", name, "--nodes", "2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        up_seconds = time.monotonic() - started
        status = json.loads(harness("cluster", "status", "--name", name, "--json").stdout)
        node1 = next(n for n in status["nodes"] if n["name"] == "node1")
        probe = (f"import socket; s = socket.create_connection(({node1['ip']!r}, 22), 5); "
                 "print(s.recv(64).decode().strip())")
        reach = harness("node", "exec", "--name", name, "node2", "--", sys.executable, "-c",
                        probe)
        evidence(record_property, kernelRelease=RELEASE, upSeconds=round(up_seconds, 1),
                 nodes={n["name"]: [n["ip"], n["state"]] for n in status["nodes"]},
                 node2ToNode1Ssh=reach.stdout.strip() or reach.stderr.strip())
        assert [n["state"] for n in status["nodes"]] == ["running", "running"]
        assert reach.returncode == 0, reach.stderr
        assert reach.stdout.startswith("SSH-2.0-")
    finally:
        down = harness("cluster", "down", "--name", name)
        assert down.returncode == 0, down.stderr
