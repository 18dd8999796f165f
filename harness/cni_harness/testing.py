"""Helpers for test suites that build clusters (used by tests/conftest.py fixtures).

`root_netns_snapshot` records the root network namespace (links, addresses, routes) so a
suite can prove the testbed never touched it; `fresh_local_cluster` brings a cluster up (after
removing a stale one of the same name) and always takes it down again; `run_cluster_name`
gives the clusters of one test run names no other run on this host uses.

Every e2e suite gets its cluster one way, `suite_lab`: the provider the environment selects
(`providers.registry`: CNI_HARNESS_PROVIDER, CNI_HARNESS_CLUSTER, CNI_HARNESS_INVENTORY),
deployed with the suite's config. Local: created if absent, reused if running. Any other
provider: the cluster must exist and answer, else the suite fails naming the provider and
the node. `require_provider` / `require_local_provider` skip a case or a suite that needs
what the provider lacks, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import string
import subprocess
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .providers.base import Availability, NodeInfo, Provider
from .providers.local.addressing import validate_cluster_name
from .providers.local.provider import LocalProvider
from .providers.registry import selection_from_env

if TYPE_CHECKING:
    from .suites.lab import Lab

# Drawn once per process (one pytest run): two runs on one host, by two people or two
# worktrees, never build clusters of the same name.
RUN_SUFFIX = "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits,
                                                   k=5))

# Link attributes that change on their own (counters, timestamps) are left out.
_LINK_KEYS = ("ifname", "ifindex", "link_type", "address", "flags", "mtu", "master")


def _ip_json(*args: str) -> list:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def root_netns_snapshot() -> dict:
    """Links, addresses and routes of the root network namespace, comparable with ==."""
    links = sorted(tuple((k, json.dumps(link.get(k), sort_keys=True)) for k in _LINK_KEYS)
                    for link in _ip_json("link", "show"))
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"])
                   for a in _ip_json("addr", "show") for i in a.get("addr_info", []))
    routes = sorted(json.dumps(r, sort_keys=True)
                    for r in _ip_json("route", "show", "table", "all"))
    return {"links": links, "addresses": addrs, "routes": routes}


def run_cluster_name(prefix: str) -> str:
    """`prefix` + this run's suffix, e.g. lct3k9xa. Kept short: the name prefixes the
    cluster's network namespaces and must pass `validate_cluster_name` (at most 12
    characters, so at most 7 for the prefix)."""
    name = prefix + RUN_SUFFIX
    validate_cluster_name(name)
    return name


def suite_cluster_name(prefix: str) -> str:
    """The cluster a suite uses: CNI_HARNESS_CLUSTER, else this run's own (`prefix`...)."""
    return os.environ.get("CNI_HARNESS_CLUSTER") or run_cluster_name(prefix)


def keep_cluster() -> bool:
    """CNI_HARNESS_KEEP=1: leave the suite's cluster up afterwards (to look at it)."""
    return os.environ.get("CNI_HARNESS_KEEP") == "1"


TUNNEL_MODES = ("Disabled", "VXLAN")


def suite_tunnel_mode() -> str:
    """CNI_HARNESS_TUNNEL_MODE (default Disabled), checked: a suite runs in either mode."""
    mode = os.environ.get("CNI_HARNESS_TUNNEL_MODE", "Disabled")
    if mode not in TUNNEL_MODES:
        raise ValueError(f"CNI_HARNESS_TUNNEL_MODE={mode!r}: allowed {', '.join(TUNNEL_MODES)}")
    return mode


@contextlib.contextmanager
def fresh_local_cluster(name: str, nodes: int = 3) -> Iterator[LocalProvider]:
    """A fresh local cluster for a test session; removed afterwards whatever happens."""
    provider = LocalProvider(name, nodes)
    provider.down()                 # a stale cluster of this name from an aborted run
    try:
        provider.up()
        yield provider
    finally:
        provider.down()


@contextlib.contextmanager
def suite_lab(cluster: str, config_text: str, nodes: int = 3,
              progress: Callable[[str], None] = lambda _m: None) -> Iterator[Lab]:
    """The deployed lab of a suite's module fixture, on the environment's provider
    (`suites.lab.deployed_lab`). Skips when the lab cannot run here (LabUnavailable: the
    local provider's tools, or what the provider lacks); an unreachable or absent cluster
    of another provider raises, so the suite fails. A cluster made here is removed at the
    end unless CNI_HARNESS_KEEP=1 (`lab.created` says whether it was)."""
    import pytest

    from .suites.lab import LabUnavailable, deployed_lab

    try:
        lab, created = deployed_lab(cluster, config_text, nodes=nodes, progress=progress)
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield lab
    finally:
        if created and not keep_cluster():
            lab.provider.down()


def require_provider(provider: Any, *capabilities: str, why: str) -> None:
    """Skip the running case unless the provider has every named method or attribute
    (e.g. `stop_node`, only LocalProvider has it); the reason names what is missing."""
    import pytest

    missing = [name for name in capabilities if not hasattr(provider, name)]
    if missing:
        pytest.skip(f"provider {provider.name} has no {', '.join(missing)}: {why}")


def require_local_provider(why: str) -> None:
    """Skip the whole suite module unless the environment selects the local provider (a
    suite that judges the kernel it runs in would otherwise pass on the runner's kernel
    while it was asked to test VMs)."""
    import pytest

    name = selection_from_env().name      # a wrong choice raises: the suite fails
    if name != "local":
        pytest.skip(f"provider {name}: {why}", allow_module_level=True)


def write_vagrant_inventory(workdir: str, entry: str, ssh_config: str,
                            backend: str = "libvirt") -> str:
    """The files `matrix run --provider vagrant` leaves for an entry's suites, written
    without Vagrant: `<workdir>/<entry>-<backend>/{ssh_config,inventory.yml}` (the
    inventory from the entry's plan, reaching the nodes through `ssh_config`). Returns the
    inventory's path (for CNI_HARNESS_INVENTORY)."""
    from .matrix.matrix import load_matrix
    from .providers.vagrant import inventory, parse_ssh_config, plan

    matrix = load_matrix()
    names = [e.name for e in matrix.os_entries]
    entry_plan = plan(matrix.os_entries[names.index(entry)], names.index(entry),
                      provider=backend)
    directory = os.path.join(workdir, f"{entry}-{backend}")
    os.makedirs(directory, exist_ok=True)
    ssh_path = os.path.join(directory, "ssh_config")
    with open(ssh_path, "w", encoding="utf-8") as fh:
        fh.write(ssh_config)
    path = os.path.join(directory, "inventory.yml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(inventory(entry_plan, ssh_path, parse_ssh_config(ssh_config)))
    return path


class RecordingProvider(Provider):
    """A stand-in cluster provider for pure tests: two nodes, every up, down and exec
    recorded in `calls`; `exec` answers only for the nodes in `answering` (the others
    fail as an ssh that cannot connect does), nothing can be written or rebooted."""

    name = "fake"

    def __init__(self, cluster: str = "fake", answering: tuple[str, ...] = ()):
        self.cluster = cluster
        self.answering = answering
        self.calls: list[str] = []

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def up(self) -> None:
        self.calls.append("up")

    def down(self) -> None:
        self.calls.append("down")

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(f"node{i}", f"10.99.0.{10 + i}", f"10.100.{i}.0/24")
                for i in (1, 2)]

    def exec(self, node: str, argv: Sequence[str], *, input: str | bytes | None = None,
             timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(f"exec {node}")
        if node in self.answering:
            return subprocess.CompletedProcess(list(argv), 0, "", "")
        raise subprocess.CalledProcessError(255, ["ssh", node], "",
                                            f"ssh: connect to host {node} port 22: "
                                            "Network is unreachable\n")

    def put_file(self, node: str, path: str, data: bytes, mode: int = 0o644) -> None:
        raise AssertionError(f"{self.name}: nothing may be written to {node}")

    def reboot(self, node: str) -> None:
        raise AssertionError(f"{self.name}: no reboot of {node}")

    def inventory_path(self) -> str:
        return f"/state/{self.cluster}/inventory.yml"

    def status(self) -> dict:
        return {"provider": self.name, "cluster": self.cluster, "state": "running"}


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a harness command; past `timeout` it gets SIGTERM, so it stops its guests or
    VMs itself (a killed command would leave them running and starve everything after
    it), and SIGKILL only if it has not ended a minute later."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err += f"\n(stopped after {timeout:.0f} s)"
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def require_available(available, what: str) -> None:
    """Skip a test module whose provider cannot run here, saying what is missing; in CI
    (which installs everything through scripts/setup.sh) that is a failure instead."""
    import pytest

    if available.ok:
        return
    message = f"{what} unavailable: {available.reason()}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI installs all of it through scripts/setup.sh)")
    pytest.skip(message)



FAILURES_FILE = "failures.log"


def record_failure(report: Any, results_dir: str | None) -> str | None:
    """Append a failed test phase's traceback to `results_dir/failures.log` as soon as
    it fails (from the e2e conftest's `pytest_runtest_logreport`); the file's path, or
    None when nothing was written. pytest prints tracebacks only when the session ends,
    so a suite cut short by its time limit (an emulated guest's entry) left none."""
    if not results_dir or not report.failed:
        return None
    path = os.path.join(results_dir, FAILURES_FILE)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
    return path
