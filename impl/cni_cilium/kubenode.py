"""What the agent's DaemonSet does on a Kubernetes node before the agent starts.

`install-cni` writes the CNI network config for the node's pod CIDR (read from its Node
object) and the plugin shim kubelet runs. The shim enters the agent container's mount
namespace to run the plugin there, since a kind node has no Python or bcc of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import paths

CONFLIST_NAME = os.path.basename(paths.CNI_CONF)
PLUGIN_NAME = os.path.basename(paths.CNI_BIN)

CNI_SHIM = """#!/bin/sh
# cni-cilium CNI shim, written by the agent's DaemonSet: runs the plugin inside the agent.
pid=$(cat /run/cni-cilium/agent.pid 2>/dev/null) || pid=
if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then
  echo '{"cniVersion":"1.0.0","code":11,"msg":"cni-cilium agent is not running"}'
  exit 1
fi
exec nsenter --target "$pid" --mount -- /opt/cni-cilium/venv/bin/cilium-cni "$@"
"""


def conflist(pod_cidr: str) -> dict:
    """The node's CNI network config (docs/architecture.md: ipam.subnet = the pod CIDR)."""
    return {"cniVersion": "1.0.0", "name": "cilium",
            "plugins": [{"type": PLUGIN_NAME, "ipam": {"subnet": pod_cidr}}]}


def _write(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install_cni(pod_cidr: str, bin_dir: str, conf_dir: str) -> list[str]:
    """Write the shim and the conflist; returns the paths written."""
    os.makedirs(bin_dir, exist_ok=True)
    os.makedirs(conf_dir, exist_ok=True)
    shim = os.path.join(bin_dir, PLUGIN_NAME)
    conf = os.path.join(conf_dir, CONFLIST_NAME)
    _write(shim, CNI_SHIM, 0o755)
    _write(conf, json.dumps(conflist(pod_cidr), indent=2) + "\n", 0o644)
    return [shim, conf]


def node_pod_cidr(node: str, timeout: float) -> str:
    """The node's pod CIDR from the API, waiting for the controller manager to assign it."""
    from kubernetes import client

    from .sources.kube import load_api_client

    api = client.CoreV1Api(load_api_client())
    deadline = time.monotonic() + timeout
    while True:
        cidr = api.read_node(node).spec.pod_cidr
        if cidr:
            return cidr
        if time.monotonic() >= deadline:
            raise TimeoutError(f"node {node} got no pod CIDR within {timeout:.0f} s")
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    """`python -m cni_cilium.kubenode install-cni --node NAME ...` (the init container)."""
    parser = argparse.ArgumentParser(prog="cni_cilium.kubenode", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-cni", help="write the CNI config and plugin shim")
    install.add_argument("--node", required=True)
    install.add_argument("--pod-cidr", help="skip the API lookup")
    install.add_argument("--bin-dir", default=os.path.dirname(paths.CNI_BIN))
    install.add_argument("--conf-dir", default=paths.CNI_CONF_DIR)
    install.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    try:
        cidr = args.pod_cidr or node_pod_cidr(args.node, args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in install_cni(cidr, args.bin_dir, args.conf_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
