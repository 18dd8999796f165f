"""The runtime side of CNI, as a kubelet/containerd does it: read the node's network
configuration list and call each plugin with `CNI_*` variables and its config on stdin.

`plugin_calls` is pure (what to run, with which environment and stdin); `invoke` runs it on
a node through the provider.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from cni_cilium.cni import conflist as default_conflist

CNI_CONF = "/etc/cni/net.d/05-cilium.conflist"
CNI_BIN_DIR = "/opt/cni/bin"


class CniCallError(RuntimeError):
    """A plugin failed; `error` is its spec-shaped error document when it gave one."""

    def __init__(self, message: str, error: dict | None = None):
        super().__init__(message)
        self.error = error or {}


@dataclass(frozen=True)
class Network:
    conflist: dict
    installed: bool          # False: the harness's own plugin (node not deployed yet)

    def plugin_argv(self, plugin_type: str) -> list[str]:
        if self.installed:
            return [f"{CNI_BIN_DIR}/{plugin_type}"]
        return [sys.executable, "-m", "cni_cilium.cni"]


def plugin_calls(conflist: dict, command: str, container_id: str, netns: str, ifname: str,
                 pod_namespace: str, pod_name: str) -> list[tuple[str, dict, dict]]:
    """(plugin type, environment, stdin config) per plugin, in call order (DEL reversed)."""
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniCallError("network configuration list has no plugins")
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_namespace};"
                    f"K8S_POD_NAME={pod_name};K8S_POD_INFRA_CONTAINER_ID={container_id}",
        "CNI_PATH": CNI_BIN_DIR,
    }
    calls = []
    for plugin in plugins:
        conf = dict(plugin, name=conflist.get("name"), cniVersion=conflist.get("cniVersion"))
        calls.append((str(plugin.get("type")), dict(env), conf))
    return list(reversed(calls)) if command == "DEL" else calls


def load_network(provider: Any, node: str, pod_cidr: str) -> Network:
    """The node's installed network config, or (local nodes see the harness's files) the
    same config with the harness's own plugin before `deploy` installed one."""
    res = provider.exec(node, ["cat", CNI_CONF], check=False)
    if res.returncode == 0:
        try:
            return Network(json.loads(res.stdout), installed=True)
        except ValueError as exc:
            raise CniCallError(f"{node}:{CNI_CONF}: not valid JSON: {exc}") from exc
    if getattr(provider, "shares_host_files", False):
        return Network(default_conflist(pod_cidr), installed=False)
    raise CniCallError(f"{node}: no CNI configuration at {CNI_CONF}; run `cni-harness deploy`")


def invoke(provider: Any, node: str, network: Network, command: str, container_id: str,
           netns: str, ifname: str, pod_namespace: str, pod_name: str,
           prev_result: dict | None = None) -> dict | None:
    """Run one CNI command on a node; the last plugin's result (ADD) or None."""
    result = prev_result if command != "ADD" else None
    for plugin_type, env, conf in plugin_calls(network.conflist, command, container_id, netns,
                                               ifname, pod_namespace, pod_name):
        if result is not None:
            conf["prevResult"] = result
        argv = ["env", *(f"{k}={v}" for k, v in env.items()), *network.plugin_argv(plugin_type)]
        try:
            res = provider.exec(node, argv, input=json.dumps(conf), check=False, timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise CniCallError(f"{plugin_type} {command} timed out on {node}") from exc
        doc = None
        if res.stdout.strip():
            try:
                doc = json.loads(res.stdout)
            except ValueError:
                doc = None
        if res.returncode != 0:
            msg = (doc or {}).get("msg") or res.stderr.strip() or f"exit {res.returncode}"
            raise CniCallError(f"{plugin_type} {command} failed on {node}: {msg}", doc)
        if command == "ADD":
            result = doc
    return result if command == "ADD" else None
