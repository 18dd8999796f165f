"""Where things live on a node (docs/architecture.md, "Files on a node").

Every path can be moved under a prefix with CNI_CILIUM_ROOT, which tests use to run the
agent's file handling without touching the real /etc or /run.
"""

from __future__ import annotations

import json
import os

ROOT = os.environ.get("CNI_CILIUM_ROOT", "/")


def _p(*parts: str) -> str:
    return os.path.join(ROOT, *parts)


CONFIG = _p("etc", "cni-cilium", "config.yaml")
MANIFEST_DIR = _p("etc", "cni-cilium", "manifests")
# Held (flock, exclusive) by whoever writes a batch of manifests; the agent reads the
# directory only when it is free, so thousands of files are reconciled once, whole.
MANIFEST_WRITE_LOCK = ".write.lock"
CNI_CONF_DIR = _p("etc", "cni", "net.d")
CNI_CONF = os.path.join(CNI_CONF_DIR, "05-cilium.conflist")
CNI_BIN = _p("opt", "cni", "bin", "cilium-cni")
INSTALL_DIR = _p("opt", "cni-cilium")
BPF_DIR = os.path.join(INSTALL_DIR, "bpf")
IPAM_DIR = _p("var", "lib", "cni-cilium", "ipam")
RUN_DIR = _p("run", "cni-cilium")
ENDPOINT_DIR = os.path.join(RUN_DIR, "endpoints")
AGENT_SOCKET = os.path.join(RUN_DIR, "agent.sock")
AGENT_PID = os.path.join(RUN_DIR, "agent.pid")
AGENT_STATUS = os.path.join(RUN_DIR, "status.json")
# Why the last start failed (the datapath did not load...), for installers waiting on it.
AGENT_START_ERROR = os.path.join(RUN_DIR, "start-error.json")
# The tunnel mode in effect since boot and the pod MTU, for the CNI plugin (agent-written).
NETWORK_STATE = os.path.join(RUN_DIR, "network.json")
LOG_DIR = _p("var", "log", "cni-cilium")
AGENT_LOG = os.path.join(LOG_DIR, "agent.log")
# Compiled datapaths keyed by sources + kernel build (datapath/compilecache.py).
BPF_CACHE_DIR = _p("var", "cache", "cni-cilium", "bpf")
BPFFS = _p("sys", "fs", "bpf")
PIN_DIR = os.path.join(BPFFS, "cni-cilium")


def write_json_atomic(path: str, doc: dict) -> None:
    """Write a JSON file (status, network state, start error) so readers never see a
    half-written one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
