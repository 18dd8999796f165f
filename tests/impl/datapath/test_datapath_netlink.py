"""tc attachments and owned routes through the installed pyroute2, in a throwaway network
namespace (root): attach, atomic replace, detection of a removed filter, detach; routes
added, listed by protocol and removed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.probe

SCRIPT = r"""
import json, os
from bcc import BPF
from pyroute2 import IPRoute
from cni_cilium.datapath import routes, tc

prog = BPF(text=b'#include <uapi/linux/pkt_cls.h>\n'
              b'int f(struct __sk_buff *s) { return TC_ACT_OK; }')
fd = prog.load_func(b"f", BPF.SCHED_CLS).fd
out = {}
with IPRoute() as ipr:
    ipr.link("add", ifname="dpa0", kind="veth", peer="dpa1")
    idx = ipr.link_lookup(ifname="dpa0")[0]
    ipr.link("set", index=idx, state="up")
    ipr.addr("add", index=idx, address="10.250.0.1", prefixlen=24)
    out["before"] = tc.attached_name(ipr, idx, tc.INGRESS)
    tc.attach(ipr, idx, tc.INGRESS, fd, "from_netdev")
    tc.attach(ipr, idx, tc.EGRESS, fd, "to_netdev")
    out["attached"] = [tc.attached_name(ipr, idx, d) for d in (tc.INGRESS, tc.EGRESS)]
    tc.attach(ipr, idx, tc.INGRESS, fd, "from_container")      # replace in place
    out["replaced"] = tc.attached_name(ipr, idx, tc.INGRESS)
    os.system("tc filter del dev dpa0 ingress")                 # behind our back
    out["after_removal"] = tc.attached_name(ipr, idx, tc.INGRESS)
    out["filters_listed"] = os.popen("tc filter show dev dpa0 egress").read().count("cnic-")
    out["detached"] = tc.detach(ipr, idx, tc.EGRESS)
    out["detached_again"] = tc.detach(ipr, idx, tc.EGRESS)
    routes.replace_via(ipr, "10.251.0.0/24", "10.250.0.2")
    routes.replace_dev(ipr, "10.96.0.0/16", idx, "10.250.0.1")
    out["routes"] = routes.node_routes(ipr)
    out["owned"] = sorted(routes.owned_routes(ipr))
    routes.delete(ipr, "10.251.0.0/24")
    routes.delete(ipr, "10.251.0.0/24")                          # already gone: no error
    out["routes_after"] = routes.node_routes(ipr)
    out["kernel_routes"] = os.popen("ip route show proto 211").read().split("\n")
print(json.dumps(out))
"""


def test_tc_and_routes_through_pyroute2_in_a_throwaway_namespace():
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] is None
    assert out["attached"] == ["cnic-from_netdev", "cnic-to_netdev"]
    assert out["replaced"] == "cnic-from_container"
    assert out["after_removal"] is None
    assert out["filters_listed"] == 1
    assert out["detached"] is True and out["detached_again"] is False
    assert out["routes"] == {"10.251.0.0/24": "10.250.0.2"}
    assert out["owned"] == ["10.251.0.0/24", "10.96.0.0/16"]
    assert out["routes_after"] == {}
    assert any(line.startswith("10.96.0.0/16 dev dpa0") and "src 10.250.0.1" in line
               for line in out["kernel_routes"])
