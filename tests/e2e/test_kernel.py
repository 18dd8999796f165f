"""The kernel suite: what the running kernel lets the datapath do, judged against matrix.yaml.

It runs on whatever kernel it finds itself on: this host, or a qemu guest started by
`cni-harness matrix run` / `repro` (which names the matrix entry in
CNI_HARNESS_MATRIX_ENTRY; otherwise the entry is found from `uname -r`).

- live preflight with default settings gets the verdict the matrix expects;
- each probe program of bpf/kernel_features.c (one helper that appeared in a known
  release) is accepted or refused by this kernel's verifier as the entry's `bpf_features`
  say: refused where expected is `expected-unsupported` (pytest.xfail), accepted there fails;
- a tc program compiled here counts real packets sent between two namespaces;
- the datapath's own IPv4 option code (bpf/lib/ipopt.h, DSR's carrier) inserts an option
  on one namespace's egress and strips it on the other's ingress, real datagrams between;
- the whole datapath (bpf/cni_cilium.c, every program) passes this kernel's verifier: a
  program grown past what an older verifier takes fails here in a minute, not in a
  traffic lab's deploy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from cni_harness.matrix.entryjob import ENTRY_ENV
from cni_harness.matrix.matrix import KernelEntry, load_matrix
from cni_harness.testing import require_local_provider
from cni_harness.timescale import scaled

pytestmark = pytest.mark.e2e

# Its probes load programs into the kernel this process runs on: with the nodes elsewhere
# (VMs), passing here would say nothing about theirs.
require_local_provider("the kernel suite probes the kernel it runs on (this runner's), "
                       "not the nodes'")

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURES_SOURCE = os.path.join(HERE, "bpf", "kernel_features.c")
OPTION_SOURCE = os.path.join(HERE, "bpf", "ip_option.c")
DATAPATH_DIR = os.path.join(HERE, os.pardir, os.pardir, "bpf")   # the datapath's own C
INGRESS, EGRESS = "ffff:fff2", "ffff:fff3"
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
                          text=True, timeout=scaled(30), check=False, **kwargs)


RECEIVER = """
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, 6, 1)      # IP_RECVOPTS: hand over any IP options seen
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(float(sys.argv[4]))      # the sender's start included (slow in TCG guests)
print("ready", flush=True)
got = with_options = 0
try:
    while got < int(sys.argv[3]):
        _data, ancillary, _flags, _peer = sock.recvmsg(64, 256)
        got += 1
        with_options += any(level == socket.IPPROTO_IP and data for level, _t, data in ancillary)
except OSError:
    pass
print(json.dumps({"received": got, "withOptions": with_options}), flush=True)
"""

SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    sock.sendto(b"probe", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.02)
"""
ADDR_A, ADDR_B = "198.18.0.1", "198.18.0.2"


@contextlib.contextmanager
def veth_between_two_namespaces():
    """Namespaces A (vk0, ADDR_A) and B (vk1, ADDR_B) joined by a veth pair; removed after."""
    side_a, side_b = f"qmk{os.getpid()}a", f"qmk{os.getpid()}b"
    try:
        for name in (side_a, side_b):
            subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", side_a, "link", "add", "vk0", "type", "veth", "peer",
                        "name", "vk1", "netns", side_b], check=True)
        for ns, dev, addr in ((side_a, "vk0", ADDR_A), (side_b, "vk1", ADDR_B)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        yield side_a, side_b
    finally:
        for name in (side_a, side_b):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def attach(bpf, program: str, netns: str, dev: str, parent: str) -> None:
    """A tc program of `bpf` on `dev` in `netns`: parent ffff:fff2 ingress, ffff:fff3 egress."""
    from pyroute2 import NetNS

    fn = bpf.load_func(program.encode(), bpf.SCHED_CLS)
    with NetNS(netns) as ns:
        index = ns.link_lookup(ifname=dev)[0]
        ns.tc("add", "clsact", index)
        ns.tc("add-filter", "bpf", index, ":1", fd=fn.fd, name=fn.name, parent=parent,
              classid=1, direct_action=True)


def send_datagrams(side_a: str, side_b: str, port: int, count: int) -> dict:
    """`count` UDP datagrams from B to A's port: what A's socket received."""
    receiver = subprocess.Popen(["ip", "netns", "exec", side_a, sys.executable, "-c",
                                 RECEIVER, ADDR_A, str(port), str(count), str(scaled(5))],
                                stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    sent = _ns(side_b, sys.executable, "-c", SENDER, ADDR_A, str(port), str(count))
    assert sent.returncode == 0, sent.stderr
    return json.loads(receiver.communicate(timeout=scaled(30))[0].strip())


def test_tc_program_counts_real_packets(features_bpf, record_property):
    count = 20
    with veth_between_two_namespaces() as (side_a, side_b):
        attach(features_bpf, "count_packets", side_a, "vk0", INGRESS)
        received = send_datagrams(side_a, side_b, 5000, count)["received"]
        counted = features_bpf[b"packet_count"][0].value
    evidence(record_property, kernelRelease=RELEASE, sent=count, received=received,
             countedOnIngressOfVk0=counted)
    assert received == count
    # Every datagram passed the program on its way in (ARP adds a few more).
    assert counted >= count


def test_datapath_ip_option_code_inserts_and_strips_on_this_kernel(record_property):
    """bpf/lib/ipopt.h, the code DSR carries its frontend with: an option inserted on B's
    egress arrives at A's ingress, is stripped there, and every datagram reaches A's
    socket with a valid header and no option left (found on 5.10 and 6.1: the header
    checksum step refused sums the helper returns sign-extended there)."""
    from bcc import BPF

    count = 20
    bpf = BPF(src_file=OPTION_SOURCE.encode(), cflags=[f"-I{DATAPATH_DIR}"])
    try:
        with veth_between_two_namespaces() as (side_a, side_b):
            attach(bpf, "insert_option", side_b, "vk1", EGRESS)
            attach(bpf, "strip_option", side_a, "vk0", INGRESS)
            received = send_datagrams(side_a, side_b, 5001, count)
        results = dict(zip(("inserted", "insertFailed", "stripped", "stripFailed"),
                           (v.value for v in bpf[b"option_results"].values())))
    finally:
        bpf.cleanup()
    evidence(record_property, kernelRelease=RELEASE, sent=count, **received, **results)
    assert results == {"inserted": count, "insertFailed": 0, "stripped": count,
                       "stripFailed": 0}
    assert received == {"received": count, "withOptions": 0}


def test_the_whole_datapath_passes_this_kernels_verifier(record_property, tmp_path):
    from cni_cilium.datapath import loader

    bpffs = str(tmp_path / "bpffs")
    os.makedirs(bpffs)
    subprocess.run(["mount", "-t", "bpf", "bpf", bpffs], check=True)
    try:
        loaded = loader.load(loader.find_bpf_dir(DATAPATH_DIR),
                             pin_root=os.path.join(bpffs, "cni-cilium"), bpffs=bpffs)
        verified = {}
        for name, fd in sorted(loaded.prog_fds.items()):
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as fh:
                info = dict(line.split(":\t", 1) for line in fh.read().splitlines()
                            if ":\t" in line)
            # verified_insns: kernels >= 5.16 say how many instructions the verifier walked
            verified[name] = int(info.get("verified_insns", "0").strip() or 0) or None
        del loaded
    finally:
        subprocess.run(["umount", bpffs], check=False)
    evidence(record_property, kernelRelease=RELEASE, programs=sorted(verified),
             verifiedInstructions=verified)
    assert sorted(verified) == sorted(loader.PROGRAMS)


def test_local_cluster_runs_on_this_kernel(record_property):
    """The local provider (namespace nodes, overlays, bridge fabric, sshd per node) comes up
    on this kernel and one node reaches another's sshd over the fabric."""
    cli = os.path.join(os.path.dirname(sys.executable), "cni-harness")
    from cni_harness.testing import run_cluster_name

    name = run_cluster_name("qmk")

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
