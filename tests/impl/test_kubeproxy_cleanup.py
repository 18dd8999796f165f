"""`cni-cilium kube-proxy cleanup` against a real ruleset, in a namespace of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from test_kubeproxy import NAT

pytestmark = pytest.mark.probe


def test_cleanup_removes_kube_chains_from_a_real_ruleset_and_keeps_the_rest():
    """In a network namespace of its own: kube-proxy's chains go, MASQUERADE stays, and a
    second run changes nothing."""
    if os.geteuid() != 0 or not shutil.which("iptables-nft-restore"):
        pytest.skip("needs root and iptables-nft")
    ns = f"kpx-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def in_ns(*argv, **kw):
            return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                                  text=True, check=True, **kw)
        in_ns("iptables-nft-restore", input=NAT)
        run = ("import json; from cni_cilium.kubeproxy import cleanup; "
               "print(json.dumps(cleanup(variants=['iptables-nft'])))")
        first = json.loads(in_ns(sys.executable, "-c", run).stdout)
        saved = in_ns("iptables-nft-save", "-t", "nat").stdout
        second = json.loads(in_ns(sys.executable, "-c", run).stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert first["changed"] and not first["errors"], first
    assert sorted(first["removed"]["iptables-nft"]["nat"]) == ["KUBE-POSTROUTING",
                                                                "KUBE-SERVICES"]
    assert "KUBE-" not in saved and "-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE" in saved
    assert second == {"changed": False, "removed": {}, "errors": []}
