"""Helpers for test suites that build clusters (used by tests/conftest.py fixtures).

`root_netns_snapshot` records the root network namespace (links, addresses, routes) so a
suite can prove the testbed never touched it; `fresh_local_cluster` brings a cluster up (after
removing a stale one of the same name) and always takes it down again; `run_cluster_name`
gives the clusters of one test run names no other run on this host uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import string
import subprocess
from typing import Iterator

from .providers.local.addressing import validate_cluster_name
from .providers.local.provider import LocalProvider

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

