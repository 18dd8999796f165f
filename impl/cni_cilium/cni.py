"""`cilium-cni`: the CNI plugin that plugs pods into a node (CNI spec 0.3.0 - 1.1.0).

A runtime (kubelet/containerd, or `cni-harness pod run`) calls it with `CNI_COMMAND` and
the other `CNI_*` variables in the environment and the network configuration as JSON on
stdin. ADD makes a veth pair (host side `lxc<hash>`, pod side `CNI_IFNAME`), gives the pod
an address from `ipam.subnet` (the node's pod CIDR) with a persistent lease, adds the
routes, and announces the endpoint to the agent in /run/cni-cilium/endpoints/; when an
agent runs it waits for the agent's `.ready` so a pod never sends unprogrammed packets.
DEL undoes it and is idempotent. CHECK verifies it. VERSION, STATUS and GC as the spec says.
Results and errors are the spec's JSON on stdout; errors exit 1.

Pure parts (config/env parsing, names, results) are functions of their input; the edge
(pyroute2, setns, files) is in `add`, `delete`, `check`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from . import paths
from .ipam import IpamError, LeaseStore, allocate, collect, release

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
PLUGIN_TYPE = "cilium-cni"
NETWORK_NAME = "cilium"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
AGENT_WAIT_SECONDS = 10.0

# Error codes from the CNI spec ("Error" section); 100+ are this plugin's own.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_CHECK_FAILED = 100
ERR_IPAM = 101
ERR_INTERNAL = 102

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CniError(Exception):
    """An error the plugin reports in the spec's shape."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_dict(self, version: str) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    subnet: str
    agent_wait: float = AGENT_WAIT_SECONDS
    prev_result: dict | None = None
    valid_attachments: tuple[tuple[str, str], ...] = ()

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: str = ""


# ---------------------------------------------------------------- pure parsing

def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K1=V1;K2=V2"."""
    out = {}
    for item in filter(None, (text or "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: invalid item {item!r}; expected KEY=VALUE")
        out[key] = value
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Read the CNI_* variables; missing or malformed ones give error code 4."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: invalid value {command!r}; allowed: "
                       f"{', '.join(COMMANDS)}")
    env = CniEnv(command=command, container_id=environ.get("CNI_CONTAINERID", ""),
                 netns=environ.get("CNI_NETNS", ""), ifname=environ.get("CNI_IFNAME", ""),
                 args=parse_cni_args(environ.get("CNI_ARGS", "")),
                 path=environ.get("CNI_PATH", ""))
    if command in ("ADD", "DEL", "CHECK"):
        if not _CONTAINER_ID.match(env.container_id):
            raise CniError(ERR_INVALID_ENV, "CNI_CONTAINERID: required (letters, digits, "
                           f"_ . -), got {env.container_id!r}")
        if not _IFNAME.match(env.ifname):
            raise CniError(ERR_INVALID_ENV, "CNI_IFNAME: required, a valid interface name, "
                           f"got {env.ifname!r}")
        if command != "DEL" and not env.netns.startswith("/"):
            raise CniError(ERR_INVALID_ENV, f"CNI_NETNS: required (a path), got {env.netns!r}")
    return env


def parse_config(raw: bytes | str, command: str) -> NetConf:
    """Validate the network configuration from stdin (codes 1, 6 or 7 on problems)."""
    try:
        doc = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ERR_DECODE, f"network configuration is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CniError(ERR_DECODE, "network configuration must be a JSON object")
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "cniVersion: required")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"cniVersion: unsupported {version!r}; "
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    if command in ("VERSION", "STATUS"):
        return NetConf(version, str(doc.get("name", "")), "10.0.0.0/24")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(ERR_INVALID_CONFIG, "name: required (the network name)")
    if doc.get("type") not in (None, PLUGIN_TYPE):
        raise CniError(ERR_INVALID_CONFIG, f"type: expected {PLUGIN_TYPE!r}, got "
                       f"{doc.get('type')!r}")
    ipam = doc.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(ERR_INVALID_CONFIG, "ipam: required, an object with `subnet`")
    subnet = ipam.get("subnet")
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except (ValueError, TypeError) as exc:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.subnet: invalid IPv4 CIDR {subnet!r}") from exc
    if net.prefixlen > 30:
        raise CniError(ERR_INVALID_CONFIG, f"ipam.subnet: {subnet} is too small (need /30 "
                       "or larger)")
    wait = doc.get("agentWaitSeconds", AGENT_WAIT_SECONDS)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
        raise CniError(ERR_INVALID_CONFIG, f"agentWaitSeconds: must be a number >= 0, got "
                       f"{wait!r}")
    prev = doc.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult: must be an object")
    valid = []
    for i, item in enumerate(doc.get("cni.dev/valid-attachments") or []):
        if not isinstance(item, dict) or "containerID" not in item:
            raise CniError(ERR_INVALID_CONFIG, f"cni.dev/valid-attachments[{i}]: needs "
                           "containerID and ifname")
        valid.append((str(item["containerID"]), str(item.get("ifname", ""))))
    return NetConf(version, name, str(net), float(wait), prev, tuple(valid))


def host_veth_name(container_id: str) -> str:
    """Host side of a pod's veth: `lxc` + the first 11 hex digits of sha256(container id)."""
    return "lxc" + hashlib.sha256(container_id.encode()).hexdigest()[:11]


def temp_peer_name(container_id: str) -> str:
    return "tmp" + hashlib.sha256(container_id.encode()).hexdigest()[:11]


def endpoint_path(container_id: str) -> str:
    return os.path.join(paths.ENDPOINT_DIR, f"{container_id}.json")


def conflist(pod_cidr: str) -> dict:
    """The node's network configuration list (/etc/cni/net.d/05-cilium.conflist)."""
    return {"cniVersion": "1.0.0", "name": NETWORK_NAME,
            "plugins": [{"type": PLUGIN_TYPE, "ipam": {"subnet": pod_cidr}}]}


def add_result(conf: NetConf, ip: str, host_if: str, host_mac: str, pod_if: str,
               pod_mac: str, netns: str) -> dict:
    """The ADD result in the shape of the configuration's cniVersion."""
    address = {"address": f"{ip}/32", "gateway": conf.gateway, "interface": 1}
    if conf.cni_version.startswith("0."):
        address["version"] = "4"
    return {"cniVersion": conf.cni_version,
            "interfaces": [{"name": host_if, "mac": host_mac},
                           {"name": pod_if, "mac": pod_mac, "sandbox": netns}],
            "ips": [address],
            "routes": [{"dst": "0.0.0.0/0", "gw": conf.gateway}],
            "dns": {}}


def version_result(version: str = LATEST_VERSION) -> dict:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# ---------------------------------------------------------------- edge: namespaces, links

_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block in another network namespace (sockets made inside stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise CniError(ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {path}: {exc.strerror}") from exc
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise CniError(ERR_IO, f"setns {path}: {os.strerror(err)}")
        yield
    finally:
        libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


def _netns_exists(path: str) -> bool:
    return bool(path) and os.path.exists(path)


def _set_sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError), open(f"/proc/sys/{key}", "w", encoding="ascii") as fh:
        fh.write(value)


def _mac(ipr: Any, index: int) -> str:
    return ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")


def agent_pid() -> int | None:
    """The running agent's pid, or None (then ADD does not wait for it)."""
    try:
        with open(paths.AGENT_PID, encoding="ascii") as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"agent" not in fh.read():
                return None
    except (OSError, ValueError):
        return None
    return pid


def pod_mtu_now() -> int:
    """The MTU for a new pod: the agent's (mode in effect since boot, uplink MTU); before the
    agent's first start after boot, what the config will put in effect on a 1500 uplink."""
    from .config import ConfigError, load_settings_file
    from .tunnel import pod_mtu

    try:
        with open(paths.NETWORK_STATE, encoding="utf-8") as fh:
            return int(json.load(fh)["podMTU"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return pod_mtu(load_settings_file(paths.CONFIG).tunnelMode)
    except (ConfigError, OSError):
        return pod_mtu("Disabled")


def wait_for_agent(container_id: str, timeout: float) -> None:
    ready = os.path.join(paths.ENDPOINT_DIR, f"{container_id}.ready")
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if agent_pid() is None:
            return                      # the agent went away: nothing to wait for
        if time.monotonic() > deadline:
            raise CniError(ERR_TRY_AGAIN, f"the agent did not program endpoint {container_id} "
                           f"within {timeout:g} s", "see /var/log/cni-cilium/agent.log")
        time.sleep(0.02)


def _delete_link(ipr: Any, name: str) -> bool:
    idx = ipr.link_lookup(ifname=name)
    if idx:
        ipr.link("del", index=idx[0])
        return True
    return False


def add(env: CniEnv, conf: NetConf) -> dict:
    from pyroute2 import IPRoute

    from .datapath.hostdev import ensure_host_devices

    if not os.path.exists(env.netns):
        raise CniError(ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {env.netns}: no such namespace")
    ensure_host_devices(conf.subnet)
    with LeaseStore(conf.subnet) as store:
        try:
            ip, state = allocate(store.state, conf.subnet, env.container_id, env.ifname,
                                 env.netns, _netns_exists)
        except IpamError as exc:
            raise CniError(ERR_IPAM, str(exc)) from exc
        store.save(state)
    host_if, peer = host_veth_name(env.container_id), temp_peer_name(env.container_id)
    try:
        with IPRoute() as ipr:
            _delete_link(ipr, host_if)          # a retried ADD replaces a half-made pair
            _delete_link(ipr, peer)
            # Both ends at the overlay's MTU in VXLAN mode: the pod's TCP then offers an MSS
            # whose segments still fit the uplink once encapsulated.
            mtu = pod_mtu_now()
            ipr.link("add", ifname=host_if, kind="veth", mtu=mtu,
                     peer={"ifname": peer, "mtu": mtu})
            host_idx = ipr.link_lookup(ifname=host_if)[0]
            peer_idx = ipr.link_lookup(ifname=peer)[0]
            fd = os.open(env.netns, os.O_RDONLY)
            try:
                ipr.link("set", index=peer_idx, net_ns_fd=fd)
            finally:
                os.close(fd)
            ipr.link("set", index=host_idx, state="up")
            host_mac = _mac(ipr, host_idx)
        with in_netns(env.netns), IPRoute() as pod:
            idx = pod.link_lookup(ifname=peer)[0]
            pod.link("set", index=idx, ifname=env.ifname)
            pod.addr("add", index=idx, address=ip, prefixlen=32)
            pod.link("set", index=idx, state="up")
            pod.route("add", dst=conf.gateway, dst_len=32, oif=idx, scope=253)
            pod.route("add", dst="0.0.0.0/0", gateway=conf.gateway, oif=idx)
            pod_mac = _mac(pod, idx)
        with IPRoute() as ipr:
            ipr.route("replace", dst=ip, dst_len=32, oif=host_idx, scope=253)
        _set_sysctl(f"net/ipv4/conf/{host_if}/rp_filter", "0")
        endpoint = {"containerID": env.container_id, "netns": env.netns, "ifname": host_if,
                    "ifindex": host_idx, "hostMac": host_mac, "podIfname": env.ifname,
                    "mac": pod_mac, "ip": ip,
                    "podNamespace": env.args.get("K8S_POD_NAMESPACE", ""),
                    "podName": env.args.get("K8S_POD_NAME", "")}
        os.makedirs(paths.ENDPOINT_DIR, exist_ok=True)
        tmp = endpoint_path(env.container_id) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(endpoint, fh, indent=2, sort_keys=True)
        os.replace(tmp, endpoint_path(env.container_id))
        if agent_pid() is not None:
            wait_for_agent(env.container_id, conf.agent_wait)
    except BaseException:
        with contextlib.suppress(Exception):
            delete(env, conf)
        raise
    return add_result(conf, ip, host_if, host_mac, env.ifname, pod_mac, env.netns)


def delete(env: CniEnv, conf: NetConf) -> None:
    """Remove the pod's endpoint, veth, route and lease; nothing there is not an error."""
    from pyroute2 import IPRoute

    for suffix in (".json", ".ready"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(paths.ENDPOINT_DIR, env.container_id + suffix))
    with IPRoute() as ipr:
        _delete_link(ipr, host_veth_name(env.container_id))
        _delete_link(ipr, temp_peer_name(env.container_id))
    with LeaseStore(conf.subnet) as store:
        _ip, state = release(store.state, env.container_id, env.ifname)
        store.save(state)


def check(env: CniEnv, conf: NetConf) -> None:
    """Verify the pod's plumbing is as ADD left it; CniError(100) naming what is wrong."""
    from pyroute2 import IPRoute

    with LeaseStore(conf.subnet) as store:
        ip = next((a for a, lease in store.state["leases"].items()
                   if lease.get("containerID") == env.container_id
                   and lease.get("ifname") == env.ifname), None)
    if ip is None:
        raise CniError(ERR_CHECK_FAILED, f"no address lease for container {env.container_id}")
    host_if = host_veth_name(env.container_id)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=host_if)
        if not idx:
            raise CniError(ERR_CHECK_FAILED, f"host veth {host_if} is missing")
        routes = ipr.get_routes(dst=ip, dst_len=32, oif=idx[0])
        if not routes:
            raise CniError(ERR_CHECK_FAILED, f"route {ip}/32 dev {host_if} is missing")
    with in_netns(env.netns), IPRoute() as pod:
        idx = pod.link_lookup(ifname=env.ifname)
        if not idx:
            raise CniError(ERR_CHECK_FAILED, f"{env.ifname} is missing in {env.netns}")
        addrs = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(index=idx[0])}
        if ip not in addrs:
            raise CniError(ERR_CHECK_FAILED, f"{env.ifname} in {env.netns} lacks {ip}")
    if not os.path.exists(endpoint_path(env.container_id)):
        raise CniError(ERR_CHECK_FAILED, f"endpoint file {endpoint_path(env.container_id)} "
                       "is missing")


def garbage_collect(conf: NetConf) -> list[str]:
    with LeaseStore(conf.subnet) as store:
        freed, state = collect(store.state, conf.valid_attachments)
        store.save(state)
    return freed


def _log(line: str) -> None:
    with contextlib.suppress(OSError):
        os.makedirs(paths.LOG_DIR, exist_ok=True)
        with open(os.path.join(paths.LOG_DIR, "cni.log"), "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict | None]:
    """One plugin invocation: (exit status, JSON document to print or None)."""
    version = LATEST_VERSION
    try:
        with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
            version = str(json.loads(stdin or b"{}").get("cniVersion") or version)
        env = parse_env(environ)
        conf = parse_config(stdin, env.command)
        version = conf.cni_version
        if env.command == "VERSION":
            return 0, version_result()
        if env.command == "STATUS":
            return 0, None
        if env.command == "ADD":
            result = add(env, conf)
            _log(f"ADD {env.container_id} {env.netns} -> {result['ips'][0]['address']}")
            return 0, result
        if env.command == "DEL":
            delete(env, conf)
            _log(f"DEL {env.container_id}")
            return 0, None
        if env.command == "CHECK":
            check(env, conf)
            return 0, None
        freed = garbage_collect(conf)
        _log(f"GC freed {freed}")
        return 0, None
    except CniError as exc:
        _log(f"error {exc.code}: {exc.msg}")
        return 1, exc.to_dict(version if version in SUPPORTED_VERSIONS else LATEST_VERSION)
    except OSError as exc:
        _log(f"I/O error: {exc}")
        return 1, CniError(ERR_IO, f"I/O failure: {exc}").to_dict(version)
    except Exception as exc:  # netlink errors, bugs: still answer in shape
        _log(f"internal error: {type(exc).__name__}: {exc}")
        return 1, CniError(ERR_INTERNAL, f"{type(exc).__name__}: {exc}").to_dict(version)


def main() -> int:
    """Entry point of the `cilium-cni` executable."""
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    status, doc = run(os.environ, stdin)
    if doc is not None:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
