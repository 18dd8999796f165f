"""The node agent: desired state in, datapath programmed, kept attached, reported.

Start-up compiles the programs once with bcc against the maps pinned in the node's bpffs,
reads back what those maps already hold (a restarted agent inherits conntrack, NAT and
service state), and atomically replaces the tc filters. Then a loop polls the module
config, the manifest directory and the endpoint directory; on any change it recomputes the
desired map contents (`translate`) and writes only the differences. Every 0.5 s it checks
that each program is still attached and puts back any that was removed (self-healing).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import yaml

from . import api, paths
from .arp import VipAnnouncer
from .bpfabi import (
    MAP_CAPACITY,
    STAT_NAMES,
    STATE_RESTARTS,
    STATE_SELF_HEALS,
    STATE_TUNNEL_MODE,
    TUNNEL_CODES,
    U64,
    index_key,
)
from .config import ConfigError, Settings, load_settings_file, replace
from .ctgc import live_backends, stale_service_keys
from .datapath import loader, routes, tc, vxlan
from .datapath.bpfsys import PinnedMap
from .datapath.writer import write_ops
from .hostdev import HOST_DEV, ensure_host_devices, gateway_of
from .manifests import Node, parse_documents
from .metrics import render_metrics
from .nodehealth import NodeHealth
from .sources import DesiredStateSource
from .translate import (
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_SERVICE_CIDR,
    MANAGED_MAPS,
    DesiredState,
    MapOp,
    Translation,
    apply_ops,
    diff_maps,
    diff_routes,
    owners,
    translate,
)
from .tunnel import (
    DEFAULT_UPLINK_MTU,
    VXLAN_DEVICE,
    VXLAN_PORT,
    VXLAN_VNI,
    pod_mtu,
    uses_overlay,
)

log = logging.getLogger("cni-cilium.agent")

TICK_SECONDS = 0.25
ATTACH_CHECK_SECONDS = 0.5
STATUS_FILE_SECONDS = 2.0
IFF_NOARP = 0x80

try:  # the C loader parses large manifest sets several times faster
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _YamlLoader = yaml.SafeLoader


def write_json_atomic(path: str, doc: dict) -> None:
    """Write JSON so readers never see a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


class ManifestReader:
    """Objects from directory/*.yaml; a file is parsed again only when it changed.
    The default `cni_cilium.sources.DesiredStateSource`."""

    name = "manifests"

    def __init__(self, directory: str):
        self.directory = directory
        self._cache: dict[str, tuple[tuple, list, list[str]]] = {}

    def quick_signature(self) -> tuple:
        """Changes when a file is added, removed or renamed (atomic writes do that)."""
        return _file_signature(self.directory)

    def signature(self) -> tuple:
        """Changes with any file's edit too (stats every file)."""
        return _dir_signature(self.directory, (".yaml", ".yml"))

    def close(self) -> None:
        """Nothing runs in the background."""

    def read(self) -> tuple[list, list[str]]:
        """Every valid object, oldest file first (on a frontend conflict the older object
        wins), and one problem line per invalid object."""
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith((".yaml", ".yml"))]
        except FileNotFoundError:
            names = []
        aged = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(self.directory, name))
                aged.append((st.st_mtime_ns, name, (st.st_mtime_ns, st.st_size, st.st_ino)))
        objects: list = []
        problems: list[str] = []
        cache = {}
        for _mtime, name, signature in sorted(aged):
            hit = self._cache.get(name)
            if hit is None or hit[0] != signature:
                hit = (signature, *self._parse(name))
            cache[name] = hit
            objects.extend(hit[1])
            problems.extend(hit[2])
        self._cache = cache
        return objects, problems

    def _parse(self, name: str) -> tuple[list, list[str]]:
        try:
            with open(os.path.join(self.directory, name), encoding="utf-8") as fh:
                docs = list(yaml.load_all(fh.read(), Loader=_YamlLoader))
        except (OSError, yaml.YAMLError) as exc:
            return [], [f"{name}: cannot read: {exc}".replace("\n", " ")]
        found, bad = parse_documents(docs, name)
        return found, [f"{name}: {line}" for line in bad]


def _dir_signature(directory: str, suffixes: tuple[str, ...]) -> tuple:
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return ()
    with entries:
        out = []
        for entry in entries:
            if entry.name.endswith(suffixes):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


def _file_signature(path: str) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return (st.st_mtime_ns, st.st_size)


@dataclass
class EndpointRecord:
    container_id: str
    device: str
    ip: str
    pod: str
    ready: bool = False
    error: str = ""

    def to_dict(self) -> dict:
        return {"containerID": self.container_id, "device": self.device, "ip": self.ip,
                "pod": self.pod, "ready": self.ready, "error": self.error}


class Agent:
    """One node's agent. `start` loads the datapath; `run` loops until `stop`."""

    def __init__(self, settings: Settings, config_path: str, node_name: str,
                 bpf_dir: str | None = None, cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
                 service_cidr: str = DEFAULT_SERVICE_CIDR,
                 source: DesiredStateSource | None = None):
        self.config_path = config_path
        self.settings = settings
        self.node_name = node_name
        self.bpf_dir = loader.find_bpf_dir(bpf_dir)
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.started = time.time()
        self.datapath: loader.LoadedDatapath | None = None
        self.programmed: dict[str, dict[bytes, bytes]] = {}
        self.translation: Translation | None = None
        self.manifest_problems: list[str] = []
        self.config_problems: list[str] = []
        self.endpoints: dict[str, EndpointRecord] = {}
        self.expected: dict[tuple[str, str], tc.Attachment] = {}
        self.device_errors: dict[str, str] = {}
        self.uplink: str | None = None
        self.uplink_mtu = DEFAULT_UPLINK_MTU
        self.tunnel_ifindex = 0
        self.network_state: dict = {}
        self.restarts = 0
        self.tunnel_in_effect = settings.tunnelMode
        self.self_heals_run = 0
        self.last_self_heal: dict | None = None
        self.reconciles = 0
        self.reconcile_errors = 0
        self.last_reconcile: dict = {}
        self._signature: tuple = ()
        self._retry = False
        self._ipr = None
        self._maps: dict[str, PinnedMap] = {}
        self._api = None
        self._hc = None
        self._reported: set[str] = set()
        self._live_backends: frozenset | None = None   # None: not checked since start
        self.stale_ct_removed = 0
        self._attached_by_me: set[tuple[str, str]] = set()
        # Egress gateway: the other agents' liveness (health port) and the VIPs announced.
        self.health = NodeHealth(node_name)
        self.vips = VipAnnouncer()
        self.egress_active: dict[str, str | None] = {}
        self.egress_moves: dict[str, int] = {}
        self.egress_last_move: dict[str, dict] = {}
        # Where Nodes, Pods, Services and EndpointSlices come from: the manifest directory,
        # or the Kubernetes API (sources.kube) where a cluster exists.
        self.source: DesiredStateSource = source or ManifestReader(paths.MANIFEST_DIR)

    # ---------------------------------------------------------------- start-up
    def start(self) -> None:
        from pyroute2 import IPRoute

        from .healthcheck import HealthCheckServer

        self._ipr = IPRoute()
        self.datapath = loader.load(self.bpf_dir)
        log.info("bpf: compiled and loaded %d programs in %.2f s (maps %s)",
                 len(self.datapath.prog_fds), self.datapath.compile_seconds,
                 self.datapath.pin_dir)
        for name in MAP_CAPACITY:
            self._maps[name] = self.datapath.open_map(name)
        self._boot_state()
        self.programmed = self._read_programmed()
        log.info("maps: inherited %s", ", ".join(
            f"{name}={len(entries)}" for name, entries in self.programmed.items()))
        for stale in loader.remove_stale_pins(self.datapath.digest):
            log.info("bpf: removed maps of an older layout: %s", stale)
        self._hc = HealthCheckServer()
        self._hc.start()
        self.health.start()
        self.vips.start()
        self._api = api.serve(paths.AGENT_SOCKET, {
            "/status": lambda: api.json_response(self.status()),
            "/services": lambda: api.json_response(self.services()),
            "/egress": lambda: api.json_response(self.egress()),
            "/metrics": self._metrics_response,
            "/healthz": lambda: api.json_response({"ok": True}),
        })

    def _boot_state(self) -> None:
        """Restart count and the tunnel mode fixed at the first start after boot."""
        state = self._maps["agent_state"]
        starts = self._state_get(STATE_RESTARTS) + 1
        state.update(index_key(STATE_RESTARTS), U64.pack(starts))
        self.restarts = starts - 1
        codes = {v: k for k, v in TUNNEL_CODES.items()}
        fixed = codes.get(self._state_get(STATE_TUNNEL_MODE))
        if fixed is None:
            fixed = self.settings.tunnelMode
            state.update(index_key(STATE_TUNNEL_MODE), U64.pack(TUNNEL_CODES[fixed]))
        self.tunnel_in_effect = fixed
        log.info("agent start %d since boot; tunnel mode in effect: %s", starts, fixed)
        self._warn_reboot_required()

    def _warn_reboot_required(self) -> None:
        if self.reboot_required:
            log.warning("tunnelMode: the config asks for %s but %s stays in effect until this "
                        "node reboots (reboot required)", self.settings.tunnelMode,
                        self.tunnel_in_effect)

    def _state_get(self, index: int) -> int:
        raw = self._maps["agent_state"].lookup(index_key(index))
        return U64.unpack(raw)[0] if raw else 0

    def _read_programmed(self) -> dict[str, dict[bytes, bytes]]:
        return {name: dict(self._maps[name].items()) for name in MANAGED_MAPS}

    # ---------------------------------------------------------------- inputs
    def _inputs_signature(self) -> tuple:
        return (_file_signature(self.config_path), self.source.signature(),
                _dir_signature(paths.ENDPOINT_DIR, (".json",)), self.health.revision)

    def _reload_settings(self) -> None:
        try:
            settings = load_settings_file(self.config_path)
        except ConfigError as exc:
            if exc.problems != self.config_problems:
                for line in exc.problems:
                    log.error("config: %s (keeping the running configuration)", line)
            self.config_problems = exc.problems
            return
        self.config_problems = []
        if settings != self.settings:
            log.info("config changed: %s", settings.effective()["settings"])
            tunnel_changed = settings.tunnelMode != self.settings.tunnelMode
            self.settings = settings
            if tunnel_changed:
                self._warn_reboot_required()

    @property
    def reboot_required(self) -> bool:
        """The config asks for another tunnel mode than the one fixed at boot."""
        return self.settings.tunnelMode != self.tunnel_in_effect

    @property
    def overlay(self) -> bool:
        return uses_overlay(self.tunnel_in_effect)

    @property
    def pod_mtu(self) -> int:
        return pod_mtu(self.tunnel_in_effect, self.uplink_mtu)

    def settings_in_effect(self) -> Settings:
        """The config with the tunnel mode fixed at boot (what the datapath runs)."""
        if self.reboot_required:
            return replace(self.settings, tunnelMode=self.tunnel_in_effect)
        return self.settings

    # ---------------------------------------------------------------- reconcile
    def reconcile(self) -> None:
        started = time.monotonic()
        self._retry = False
        self._reload_settings()
        objects, problems = self.source.read()
        previous = owners(self.translation) if self.translation is not None else {}
        if self.overlay:
            self.tunnel_ifindex = vxlan.ensure_device(self._ipr, self.pod_mtu)
        translation = translate(DesiredState(self.settings_in_effect(), self.node_name,
                                             objects, cluster_cidr=self.cluster_cidr,
                                             previous_owners=previous,
                                             tunnel_ifindex=self.tunnel_ifindex,
                                             node_addresses=self.health.addresses(),
                                             egress=self.health.view()))
        self._report_changes(problems + translation.problems, translation.warnings)
        ops: list[MapOp] = []
        if translation.node is not None:
            self._ensure_node(translation)
            ops = diff_maps(self.programmed, translation.maps)
            self._write_ops(ops)
            self._sync_routes(translation)
            self._forget_gone_backends(translation)
            self._hc.update(translation.node.internal_ip, translation.health_checks)
            self._apply_egress(translation, objects)
        self._sync_endpoints()
        with self.lock:
            self.translation = translation
            self.manifest_problems = problems
            self.reconciles += 1
            self.last_reconcile = {"at": time.time(), "ops": len(ops),
                                   "seconds": round(time.monotonic() - started, 4)}
        if ops:
            log.info("reconcile: %d map writes in %.3f s (%d services, %d frontends)",
                     len(ops), time.monotonic() - started, translation.services,
                     len(translation.frontends))

    def _forget_gone_backends(self, translation: Translation) -> None:
        """Remove conntrack entries that pin connections to backends no longer behind any
        frontend (see `ctgc`): at start, and whenever a backend goes away."""
        live = live_backends(translation.frontends)
        if self._live_backends is not None and live >= self._live_backends:
            self._live_backends = live
            return
        ct = self._maps["ct4"]
        stale = stale_service_keys(ct.items(), live)
        removed = sum(1 for key in stale if ct.delete(key))
        self._live_backends = live
        if removed:
            self.stale_ct_removed += removed
            log.info("conntrack: removed %d connections to backends that are gone; their next "
                     "packets choose a live backend", removed)

    def _apply_egress(self, translation: Translation, objects: list) -> None:
        """After the maps: tell the health endpoint who the peers are, announce the VIPs
        this node is active for (their reverse NAT is programmed already), log moves."""
        self.health.configure(translation.node.internal_ip, self.uplink or "",
                              {o.name: o.internal_ip for o in objects if isinstance(o, Node)})
        self.vips.update(translation.egress.announce, self.uplink)
        self.health.publish(self.vips.announced(),
                            {gw.name: gw.active_node for gw in translation.egress.gateways})
        for gw in translation.egress.gateways:
            before = self.egress_active.get(gw.name)
            if before is not None and before != gw.active_node:   # not the first election
                self.egress_moves[gw.name] = self.egress_moves.get(gw.name, 0) + 1
                self.egress_last_move[gw.name] = {"at": time.time(), "from": before,
                                                  "to": gw.active_node}
                log.warning("egress gateway %s: active node %s -> %s (%s)", gw.name,
                            before or "none", gw.active_node or "none", gw.ready.reason)
            elif before != gw.active_node or gw.name not in self.egress_active:
                log.info("egress gateway %s: active node %s (%s)", gw.name,
                         gw.active_node or "none", gw.ready.reason)
            self.egress_active[gw.name] = gw.active_node

    def _report_changes(self, problems: list[str], warnings: list[str]) -> None:
        """Log each problem and warning once, when it appears."""
        current = {f"problem: {p}" for p in problems} | {f"warning: {w}" for w in warnings}
        for line in sorted(current - self._reported):
            (log.error if line.startswith("problem") else log.warning)("manifests: %s", line)
        for line in sorted(self._reported - current):
            log.info("manifests: resolved: %s", line)
        self._reported = current

    def _write_ops(self, ops: list[MapOp]) -> None:
        if not ops:
            return
        try:
            write_ops(self._maps, ops)
        except Exception:
            self.programmed = self._read_programmed()  # believe what the maps hold now
            raise
        self.programmed = apply_ops(self.programmed, ops)

    def _ensure_node(self, translation: Translation) -> None:
        """Host devices, uplink and host programs, the service route."""
        node = translation.node
        ensure_host_devices(node.pod_cidr)
        uplink = self._device_with_address(node.internal_ip)
        if uplink is None:
            self.device_errors["uplink"] = f"no device holds the InternalIP {node.internal_ip}"
            self._retry = True
            return
        self.device_errors.pop("uplink", None)
        if uplink != self.uplink:
            log.info("uplink: %s (InternalIP %s)", uplink, node.internal_ip)
        self.uplink = uplink
        self.uplink_mtu = self._ipr.get_links(self._ifindex(uplink))[0].get_attr("IFLA_MTU")
        attachments = [tc.Attachment(uplink, tc.INGRESS, "from_netdev"),
                       tc.Attachment(uplink, tc.EGRESS, "to_netdev"),
                       tc.Attachment(HOST_DEV, tc.EGRESS, "from_host")]
        if self.overlay:
            vxlan.ensure_device(self._ipr, self.pod_mtu)   # the MTU follows the uplink's
            attachments.append(tc.Attachment(VXLAN_DEVICE, tc.INGRESS, "from_overlay"))
        for att in attachments:
            self._attach(att)
        self._write_network_state()
        host_idx = self._ifindex(HOST_DEV)
        if host_idx is not None:
            # Service addresses have no neighbour: without NOARP the node's own packets to a
            # ClusterIP would wait for an ARP answer and never reach from_host.
            self._ipr.link("set", index=host_idx, flags=IFF_NOARP, change=IFF_NOARP)
            routes.replace_dev(self._ipr, self.service_cidr, host_idx, gateway_of(node.pod_cidr))

    def _write_network_state(self) -> None:
        """Tell the CNI plugin the mode in effect and the MTU its pods get."""
        doc = {"tunnelMode": self.tunnel_in_effect, "podMTU": self.pod_mtu,
               "uplink": self.uplink, "uplinkMTU": self.uplink_mtu}
        if doc != self.network_state:
            write_json_atomic(paths.NETWORK_STATE, doc)
            self.network_state = doc

    def _device_with_address(self, address: str) -> str | None:
        for msg in self._ipr.get_addr(family=socket.AF_INET):
            if msg.get_attr("IFA_ADDRESS") == address:
                return self._ipr.get_links(msg["index"])[0].get_attr("IFLA_IFNAME")
        return None

    def _ifindex(self, device: str) -> int | None:
        found = self._ipr.link_lookup(ifname=device)
        return found[0] if found else None

    def _attach(self, att: tc.Attachment) -> bool:
        """Attach (replace) a program unless it is already ours at that hook."""
        with self.lock:
            self.expected[(att.device, att.direction)] = att
        ifindex = self._ifindex(att.device)
        if ifindex is None:
            return False
        want = tc.filter_name(att.program)
        if self._attached_here(ifindex, att, want):
            return True
        tc.attach(self._ipr, ifindex, att.direction, self.datapath.prog_fds[att.program],
                  att.program)
        self._attached_by_me.add((att.device, att.direction))
        return True

    def _attached_here(self, ifindex: int, att: tc.Attachment, want: str) -> bool:
        # A filter left by a previous agent has our name but runs old code: replace it once.
        return ((att.device, att.direction) in self._attached_by_me
                and tc.attached_name(self._ipr, ifindex, att.direction) == want)

    def _sync_routes(self, translation: Translation) -> None:
        current = routes.node_routes(self._ipr)
        upsert, delete = diff_routes(current, translation.node_routes)
        for cidr, via in upsert.items():
            log.info("route: %s via %s", cidr, via)
            routes.replace_via(self._ipr, cidr, via)
        for cidr in delete:
            log.info("route: %s removed (node gone)", cidr)
            routes.delete(self._ipr, cidr)
        self._sync_tunnel_routes(translation)

    def _sync_tunnel_routes(self, translation: Translation) -> None:
        """VXLAN: other nodes' pod CIDRs via cilium_host (whose program encapsulates), with
        the overlay's MTU and this node's InternalIP as the source of its own connections."""
        host_idx = self._ifindex(HOST_DEV)
        if host_idx is None:
            return
        node_ip = translation.node.internal_ip
        current = {cidr: attrs for cidr, attrs in routes.dev_routes(self._ipr, host_idx).items()
                   if cidr != self.service_cidr}
        wanted = {cidr: (node_ip, self.pod_mtu) for cidr in translation.tunnel_routes}
        upsert, delete = diff_routes(current, wanted)
        for cidr in upsert:
            log.info("route: %s into the overlay (node %s, mtu %d)", cidr,
                     translation.tunnel_routes[cidr], self.pod_mtu)
            routes.replace_dev(self._ipr, cidr, host_idx, node_ip, self.pod_mtu)
        for cidr in delete:
            log.info("route: %s removed from the overlay (node gone)", cidr)
            routes.delete(self._ipr, cidr)

    def _sync_endpoints(self) -> None:
        seen: set[str] = set()
        try:
            names = sorted(n for n in os.listdir(paths.ENDPOINT_DIR) if n.endswith(".json"))
        except FileNotFoundError:
            names = []
        for name in names:
            cid = name[:-len(".json")]
            seen.add(cid)
            record = self.endpoints.get(cid)
            if record is not None and record.ready:
                continue
            try:
                with open(os.path.join(paths.ENDPOINT_DIR, name), encoding="utf-8") as fh:
                    doc = json.load(fh)
                record = EndpointRecord(cid, doc["ifname"], doc.get("ip", ""),
                                        f"{doc.get('podNamespace', '')}/{doc.get('podName', '')}")
            except (OSError, ValueError, KeyError) as exc:
                self._retry = True
                log.warning("endpoint %s: unreadable (%s); retrying", name, exc)
                continue
            ok = (self._attach(tc.Attachment(record.device, tc.INGRESS, "from_container"))
                  and self._attach(tc.Attachment(record.device, tc.EGRESS, "to_container")))
            if ok:
                ready = os.path.join(paths.ENDPOINT_DIR, f"{cid}.ready")
                with open(ready, "w", encoding="ascii") as fh:
                    fh.write(f"{time.time()}\n")
                record.ready = True
                record.error = ""
                log.info("endpoint %s (%s, %s): programs attached to %s", cid[:12], record.pod,
                         record.ip, record.device)
            else:
                record.error = f"device {record.device} not found"
                self._retry = True
            with self.lock:
                self.endpoints[cid] = record
        with self.lock:
            for cid in set(self.endpoints) - seen:
                record = self.endpoints.pop(cid)
                log.info("endpoint %s (%s) removed", cid[:12], record.pod)
                self.expected.pop((record.device, tc.INGRESS), None)
                self.expected.pop((record.device, tc.EGRESS), None)
                self._attached_by_me.discard((record.device, tc.INGRESS))
                self._attached_by_me.discard((record.device, tc.EGRESS))

    # ---------------------------------------------------------------- self-healing
    def check_attachments(self) -> None:
        """Put back any program that is no longer attached where it should be."""
        if self.overlay and self._ifindex(VXLAN_DEVICE) is None:
            log.warning("self-heal: the VXLAN device %s is missing; recreating it",
                        VXLAN_DEVICE)
            self._retry = True         # the next reconcile makes it and reprograms its index
        with self.lock:
            expected = list(self.expected.values())
        for att in expected:
            ifindex = self._ifindex(att.device)
            if ifindex is None:
                continue  # device gone: its endpoint removal follows (or its re-creation)
            found = tc.attached_name(self._ipr, ifindex, att.direction)
            if found == tc.filter_name(att.program):
                continue
            try:
                tc.attach(self._ipr, ifindex, att.direction,
                          self.datapath.prog_fds[att.program], att.program)
            except tc.TcError as exc:
                log.error("self-heal: %s %s: cannot restore %s: %s", att.device,
                          att.direction, att.program, exc)
                continue
            total = self._state_get(STATE_SELF_HEALS) + 1
            self._maps["agent_state"].update(index_key(STATE_SELF_HEALS), U64.pack(total))
            with self.lock:
                self.self_heals_run += 1
                self.last_self_heal = {"at": time.time(), "device": att.device,
                                       "direction": att.direction, "program": att.program,
                                       "found": found}
            log.warning("self-heal: %s %s program %s was missing (found: %s); restored "
                        "(self-heals since boot: %d)", att.device, att.direction, att.program,
                        found or "nothing", total)

    # ---------------------------------------------------------------- reporting
    def _stats(self) -> dict[str, int]:
        stats = self._maps["stats"]
        return {name: stats.percpu_sum_u64(index_key(i)) for i, name in enumerate(STAT_NAMES)}

    def _attachment_view(self) -> dict[str, dict]:
        from pyroute2 import IPRoute

        devices: dict[str, dict] = {}
        with self.lock:
            expected = list(self.expected.values())
        with IPRoute() as ipr:  # the API thread's own netlink socket
            for att in expected:
                idx = ipr.link_lookup(ifname=att.device)
                found = tc.attached_name(ipr, idx[0], att.direction) if idx else None
                entry = devices.setdefault(att.device, {"attached": {}, "ok": True})
                entry["attached"][att.direction] = {
                    "program": att.program, "ok": found == tc.filter_name(att.program),
                    "found": found}
                entry["ok"] = entry["ok"] and found == tc.filter_name(att.program)
        return devices

    def _map_fill(self) -> dict[str, dict]:
        with self.lock:
            counts = {name: len(entries) for name, entries in self.programmed.items()}
        ct = PinnedMap(self._maps["ct4"].path)
        try:
            counts["ct4"] = ct.count()
        finally:
            ct.close()
        out = {}
        for name, count in counts.items():
            cap = MAP_CAPACITY[name]
            out[name] = {"entries": count, "capacity": cap, "fill": round(count / cap, 6)}
        return out

    def status(self) -> dict:
        with self.lock:
            tr = self.translation
            settings = self.settings
            doc = {
                "node": self.node_name,
                "pid": os.getpid(),
                "state": "running" if tr is not None and tr.node is not None else "waiting",
                "started": self.started,
                "uptimeSeconds": round(time.time() - self.started, 1),
                "restarts": self.restarts,
                "selfHeals": self._state_get(STATE_SELF_HEALS),
                "staleConntrackRemoved": self.stale_ct_removed,
                "selfHealsThisRun": self.self_heals_run,
                "lastSelfHeal": self.last_self_heal,
                "rebootRequired": self.reboot_required,
                "modes": {
                    "tunnelMode": self.tunnel_in_effect,
                    "tunnelModeConfigured": settings.tunnelMode,
                    "tunnelModePending": settings.tunnelMode if self.reboot_required else None,
                    "lbModeConfigured": settings.bpfLBMode,
                    "lbMode": dict(tr.lb_mode) if tr else {},
                    "masqueradeMode": settings.masqueradeMode,
                    "createNodeRoutes": self.settings_in_effect().effective_create_node_routes,
                    "kubeProxyReplacement": True,
                    "lbAlgorithm": "random",
                },
                "bpf": {
                    "compileSeconds": round(self.datapath.compile_seconds, 3),
                    "abi": self.datapath.digest, "pinDir": self.datapath.pin_dir,
                    "sources": self.datapath.bpf_dir,
                },
                "uplink": self.uplink,
                "deviceErrors": dict(self.device_errors),
                "endpoints": [r.to_dict() for r in self.endpoints.values()],
                "services": {"services": tr.services if tr else 0,
                             "frontends": len(tr.frontends) if tr else 0},
                "hostPorts": {"frontends": tr.host_ports if tr else 0,
                              "defaultAddresses": list(tr.host_port_addresses) if tr else [],
                              "allAddresses": settings.hostPortAllAddresses,
                              "nodeAddresses": list(self.health.addresses())},
                "egress": self._egress_summary(tr),
                "healthChecks": [{"port": port, "service": f"{hc.namespace}/{hc.name}",
                                  "localEndpoints": hc.local_endpoints, "status": hc.status}
                                 for port, hc in sorted(tr.health_checks.items())] if tr else [],
                "routes": dict(tr.node_routes) if tr else {},
                "tunnel": self._tunnel_view(tr),
                "problems": (self.config_problems + self.manifest_problems
                             + (tr.problems if tr else [])),
                "warnings": list(tr.warnings) if tr else [],
                "reconcile": {"count": self.reconciles, "errors": self.reconcile_errors,
                              **self.last_reconcile},
            }
        doc["devices"] = self._attachment_view()
        doc["maps"] = self._map_fill()
        return doc

    def _egress_summary(self, tr: Translation | None) -> dict:
        eg = tr.egress if tr else None
        return {
            "gateways": [{**g.to_dict(), "moves": self.egress_moves.get(g.name, 0),
                          "lastMove": self.egress_last_move.get(g.name)}
                         for g in (eg.gateways if eg else [])],
            "policies": len(eg.policies) if eg else 0,
            "entries": eg.entries_by_action() if eg else {},
            "announcing": self.vips.status(),
            "health": self.health.status(),
        }

    def egress(self) -> dict:
        """Gateways (election, status), policies and this node's view of the agents."""
        with self.lock:
            tr = self.translation
            doc = {"node": self.node_name, **self._egress_summary(tr)}
            doc["policies"] = [p.to_dict() for p in tr.egress.policies] if tr and \
                tr.egress else []
        return doc

    def _tunnel_view(self, tr: Translation | None) -> dict:
        view: dict[str, Any] = {"mode": self.tunnel_in_effect, "podMTU": self.pod_mtu}
        if self.overlay:
            view.update({"device": VXLAN_DEVICE, "ifindex": self.tunnel_ifindex,
                         "port": VXLAN_PORT, "vni": VXLAN_VNI,
                         "peers": dict(tr.tunnel_routes) if tr else {}})
        return view

    def services(self) -> dict:
        with self.lock:
            tr = self.translation
            return {"node": self.node_name,
                    "frontends": [f.to_dict() for f in tr.frontends] if tr else []}

    def _metrics_response(self) -> api.Response:
        return 200, "text/plain; version=0.0.4", render_metrics(self.status(),
                                                                self._stats()).encode()

    # ---------------------------------------------------------------- loop
    def _quick_signature(self) -> tuple:
        """Changes whenever a file is added, removed or renamed (atomic writes do that)."""
        return (_file_signature(self.config_path), self.source.quick_signature(),
                _file_signature(paths.ENDPOINT_DIR), self.health.revision)

    def run(self) -> None:
        next_check = next_status = next_scan = 0.0
        quick: tuple = ()
        while not self.stop_event.is_set():
            # A full scan stats every file (edits in place); with many files it runs less
            # often, so polling stays under ~5% of a CPU. Directory changes are seen at once.
            now = time.monotonic()
            if now >= next_scan or self._quick_signature() != quick or self._retry:
                quick = self._quick_signature()
                signature = self._inputs_signature()
                next_scan = now + max(TICK_SECONDS, 20 * (time.monotonic() - now))
            else:
                signature = self._signature
            if signature != self._signature or self._retry:
                try:
                    self.reconcile()
                    self._signature = signature
                except Exception:
                    with self.lock:
                        self.reconcile_errors += 1
                    self._retry = True
                    log.exception("reconcile failed; retrying")
            now = time.monotonic()
            if now >= next_check:
                try:
                    self.check_attachments()
                except Exception:
                    log.exception("attachment check failed")
                next_check = now + ATTACH_CHECK_SECONDS
            if now >= next_status:
                with contextlib.suppress(Exception):
                    write_json_atomic(paths.AGENT_STATUS, self.status())
                next_status = now + STATUS_FILE_SECONDS
            self.stop_event.wait(TICK_SECONDS)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        """Stop serving; the datapath stays in place (programs attached, maps pinned)."""
        self.source.close()
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.AGENT_SOCKET)
        if self._hc is not None:
            self._hc.stop()
        self.health.stop()
        self.vips.stop()
        for bpf_map in self._maps.values():
            bpf_map.close()
        if self._ipr is not None:
            self._ipr.close()


def _setup_logging(log_file: str | None, debug: bool) -> None:
    handlers: list[logging.Handler] = []
    if log_file and log_file != "-":
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    else:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


KUBE_SYNC_SECONDS = 60


def _open_source(source: str, kubeconfig: str | None) -> DesiredStateSource | None:
    """The desired-state source the agent was asked for; None (logged) when it cannot serve.
    The API source must have listed everything once: reconciling a partial view would
    remove services that are simply not read yet."""
    if source == "manifests":
        return ManifestReader(paths.MANIFEST_DIR)
    from .sources.kube import KubeSource, load_api_client

    try:
        kube = KubeSource(load_api_client(kubeconfig)).start()
    except Exception as exc:  # any client set-up failure is a refusal to start, said plainly
        message = f"no Kubernetes API client: {exc}"
    else:
        if kube.wait_synced(KUBE_SYNC_SECONDS):
            log.info("desired state: the Kubernetes API (%s)", kube.store.revision)
            return kube
        kube.close()
        message = (f"the Kubernetes API gave no complete list within {KUBE_SYNC_SECONDS} s: "
                   + "; ".join(f"{k}: {v}" for k, v in sorted(kube.errors.items())))
    log.error("cannot start: %s", message)
    print(f"error: {message}", flush=True)
    return None


def run(config_path: str = paths.CONFIG, node_name: str | None = None,
        bpf_dir: str | None = None, log_file: str | None = paths.AGENT_LOG,
        cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
        service_cidr: str = DEFAULT_SERVICE_CIDR, source: str = "manifests",
        kubeconfig: str | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; returns the exit status. `source`: where desired
    state comes from, `manifests` (the directory) or `kube` (the Kubernetes API)."""
    try:
        settings = load_settings_file(config_path)
    except ConfigError as exc:
        _setup_logging(log_file, False)
        for line in exc.problems:
            log.error("config: %s", line)
            print(f"error: {line}", flush=True)
        return 2
    _setup_logging(log_file, settings.debugLogging)
    node_name = node_name or socket.gethostname()
    os.makedirs(paths.RUN_DIR, exist_ok=True)
    os.makedirs(paths.ENDPOINT_DIR, exist_ok=True)
    lock = open(os.path.join(paths.RUN_DIR, "agent.lock"), "a+")  # noqa: SIM115 (held)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        message = f"another agent is running on this node (pid file {paths.AGENT_PID})"
        log.error("cannot start: %s", message)
        print(f"error: {message}", flush=True)
        return 1
    desired = _open_source(source, kubeconfig)
    if desired is None:
        return 1
    # The pid file goes first: the CNI plugin then waits for endpoints to be programmed
    # while the programs compile, instead of letting pods start unprogrammed.
    with open(paths.AGENT_PID, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    try:
        agent = Agent(settings, config_path, node_name, bpf_dir, cluster_cidr, service_cidr,
                      source=desired)
        agent.start()
    except (loader.LoadError, OSError) as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", flush=True)
        desired.close()
        # No agent runs: no status, but the reason, so a waiting installer stops at once.
        for stale in (paths.AGENT_PID, paths.AGENT_STATUS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        write_json_atomic(paths.AGENT_START_ERROR, {"error": str(exc), "node": node_name,
                                                    "time": time.time()})
        return 1
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.AGENT_START_ERROR)

    def stop(signum, _frame):
        log.info("signal %d: stopping (the datapath stays in place)", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("agent running on node %s with %s", node_name,
             agent.settings_in_effect().effective()["effective"])
    try:
        agent.run()
    finally:
        agent.close()
        # The status describes a running agent: a restart's waiters must see the new one's.
        for stale in (paths.AGENT_PID, paths.AGENT_STATUS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
    return 0
