"""Live probes of the running kernel for preflight (the edge: subprocess, mounts, bcc).

Each probe returns a `Check`. Probes that touch networking run inside a throw-away
network namespace (`unshare --net`), so the host's own network is never changed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from .config import Settings
from .preflight import FAIL, PASS, SKIP, WARN, Check

ELASTIC_PATHS = ("/opt/Elastic/Agent", "/opt/Elastic/Endpoint", "/Library/Elastic")
ELASTIC_PROCESSES = ("elastic-agent", "elastic-endpoint", "elastic-endpoin")  # comm is 15 chars


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def probe_bpffs() -> Check:
    """A fresh bpffs instance can be mounted (the agent pins its maps there)."""
    with tempfile.TemporaryDirectory(prefix="cni-cilium-bpffs-") as tmp:
        res = _run(["mount", "-t", "bpf", "bpf", tmp])
        if res.returncode != 0:
            return Check("probe:bpffs", FAIL, f"cannot mount bpffs: {res.stderr.strip()}",
                         "the kernel needs CONFIG_BPF_SYSCALL=y; run as root")
        _run(["umount", tmp])
    return Check("probe:bpffs", PASS, "bpffs can be mounted")


BCC_PROBE_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
BPF_ARRAY(probe_counter, u64, 1);
int probe_cls(struct __sk_buff *skb) {
    int zero = 0;
    u64 *count = probe_counter.lookup(&zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return TC_ACT_OK;
}
"""


def probe_bcc() -> Check:
    """bcc compiles and the kernel verifier accepts a trivial SCHED_CLS program."""
    try:
        from bcc import BPF  # type: ignore[import-not-found]
    except ImportError:
        return Check("probe:bcc", FAIL, "bcc (python3-bpfcc) is not importable",
                     "apt-get install python3-bpfcc (Debian/Ubuntu) or "
                     "yum install python3-bcc (CentOS/RHEL)")
    try:
        bpf = BPF(text=BCC_PROBE_PROGRAM.encode())
        fn = bpf.load_func(b"probe_cls", BPF.SCHED_CLS)
        fd = fn.fd
        bpf.cleanup()
    except Exception as exc:
        build = f"/lib/modules/{os.uname().release}/build"
        remedy = ("install the kernel headers; if the running kernel has no headers package, "
                  f"link {build} to the distribution's linux-headers directory")
        return Check("probe:bcc", FAIL, f"bcc could not load a SCHED_CLS program: {exc}", remedy)
    return Check("probe:bcc", PASS, f"bcc loaded a SCHED_CLS program (fd {fd})")


def _probe_in_netns(name: str, script: str, ok: str, remedy: str) -> Check:
    res = _run(["unshare", "--net", "sh", "-ec", script])
    if res.returncode != 0:
        return Check(name, FAIL, f"{res.stderr.strip() or 'failed'}", remedy)
    return Check(name, PASS, ok)


def probe_clsact() -> Check:
    """A clsact qdisc can be added (where the tc programs attach)."""
    return _probe_in_netns(
        "probe:clsact",
        "ip link add probe0 type veth peer name probe1 && tc qdisc add dev probe0 clsact",
        "clsact qdisc can be added",
        "the kernel needs CONFIG_NET_SCH_INGRESS and CONFIG_NET_CLS_BPF")


def probe_vxlan(settings: Settings) -> Check:
    """A collect-metadata VXLAN device can be created (needed when tunnelMode is VXLAN)."""
    if settings.tunnelMode != "VXLAN":
        return Check("probe:vxlan", SKIP, "tunnelMode is Disabled; VXLAN not needed")
    return _probe_in_netns(
        "probe:vxlan",
        "ip link add probe0 type vxlan external dstport 8472 && ip link set probe0 up",
        "VXLAN device (external, port 8472) can be created",
        "the kernel needs CONFIG_VXLAN (modprobe vxlan)")


def probe_elastic(proc: str = "/proc") -> Check:
    """Elastic Endpoint may detach other eBPF programs (cilium#28433): warn when present."""
    found = [p for p in ELASTIC_PATHS if os.path.exists(p)]
    try:
        pids = [d for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "comm"), encoding="utf-8") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm in ELASTIC_PROCESSES:
            found.append(f"process {comm} (pid {pid})")
    if found:
        return Check("probe:elastic-agent", WARN,
                     "Elastic Agent/Endpoint present (" + ", ".join(found) +
                     "): it may remove cni-cilium's eBPF programs",
                     "disable Elastic Endpoint or restrict its access to the management server")
    return Check("probe:elastic-agent", PASS, "no Elastic Agent/Endpoint found")


def live_probes(settings: Settings) -> list[Check]:
    """Every live probe, in a stable order."""
    return [probe_bpffs(), probe_bcc(), probe_clsact(), probe_vxlan(settings), probe_elastic()]
