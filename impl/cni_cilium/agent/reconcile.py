"""The agent's reconcile loop: desired state in, map differences written, kept attached.

Start-up loads the programs against the maps pinned in the node's bpffs (from the node's
compile cache when it holds this compile, else compiled once with bcc), reads back what
those maps already hold (a restarted agent inherits conntrack, NAT and service state), and
atomically replaces the tc filters. Then a loop polls the module
config, the desired-state source and the endpoint directory (`inputs`); on any change it
recomputes the desired map contents (`translate`) and writes only the differences, then
brings the node's devices and routes in line (`devices`). Every 0.5 s it checks that each
program is still attached and puts back any that was removed (self-healing). What it
reports is `status`; `main.run` is the process around it.

A feature that programs the datapath adds its maps to `translate` (the loop diffs and
writes every managed map); one that needs a device or route adds it to `devices`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from .. import api, pacing, paths
from ..bpfabi import (
    MAP_CAPACITY,
    STATE_RESTARTS,
    STATE_SELF_HEALS,
    STATE_TUNNEL_MODE,
    TUNNEL_CODES,
    U64,
    index_key,
)
from ..config import ConfigError, Settings, load_settings_file, replace
from ..ctgc import live_backends, stale_service_keys
from ..datapath import compilecache, loader
from ..datapath.bpfsys import PinnedMap
from ..datapath.writer import write_ops
from ..maglev import DEFAULT_TABLE_SIZE
from ..policyapi import PolicyService
from ..preflight import extra_lb_refusal
from ..sources import DesiredStateSource
from ..translate import (
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_SERVICE_CIDR,
    MANAGED_MAPS,
    DesiredState,
    MapOp,
    Translation,
    apply_ops,
    diff_maps,
    owners,
    translate,
)
from ..tunnel import VXLAN_DEVICE, uses_overlay
from . import status as reporting
from .devices import NodeDevices
from .egress import EgressRuntime
from .inputs import ManifestReader, inputs_signature, quick_signature
from .lbstate import LbState

log = logging.getLogger("cni-cilium.agent")

TICK_SECONDS = 0.25
SETTLE_SECONDS = 0.3        # the manifest directory must be this quiet before a reconcile
SETTLE_MAX_SECONDS = 5.0    # ... unless it keeps changing for longer
WRITER_MAX_SECONDS = 120.0  # the longest a batch writer's lock holds reconciles back
ATTACH_CHECK_SECONDS = 0.5
STATUS_FILE_SECONDS = 2.0
COSTLY_JOB_SHARE = 0.01     # of a CPU: the most a scan or a map count may use


class Agent:
    """One node's agent. `start` loads the datapath; `run` loops until `stop`."""

    def __init__(self, settings: Settings, config_path: str, node_name: str,
                 bpf_dir: str | None = None, cluster_cidr: str = DEFAULT_CLUSTER_CIDR,
                 service_cidr: str = DEFAULT_SERVICE_CIDR,
                 source: DesiredStateSource | None = None,
                 maglev_table_size: int = DEFAULT_TABLE_SIZE):
        self.config_path = config_path
        self.settings = settings
        self.node_name = node_name
        self.bpf_dir = loader.find_bpf_dir(bpf_dir)
        self.cluster_cidr = cluster_cidr
        self.service_cidr = service_cidr
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        # The loop's periods, stretched once by the agent's time scale.
        self.tick = pacing.paced(TICK_SECONDS)
        self.attach_check_seconds = pacing.paced(ATTACH_CHECK_SECONDS)
        self.status_file_seconds = pacing.paced(STATUS_FILE_SECONDS)
        # Full scans of the inputs (every manifest file stat'ed) and counts of conntrack
        # for the status grow with the cluster: each is kept under 1% of a CPU.
        self.scan_pacer = pacing.CostPacer(COSTLY_JOB_SHARE, floor=self.tick)
        self.ct_count_pacer = pacing.CostPacer(COSTLY_JOB_SHARE, floor=self.status_file_seconds)
        self.ct_count = 0
        self.ct_count_lock = threading.Lock()
        self.writer_max_seconds = pacing.paced(WRITER_MAX_SECONDS)
        self.started = time.time()
        self.datapath: loader.LoadedDatapath | None = None
        self.maps: dict[str, PinnedMap] = {}
        self.programmed: dict[str, dict[bytes, bytes]] = {}
        self.translation: Translation | None = None
        self.manifest_problems: list[str] = []
        self.config_problems: list[str] = []
        self.devices = NodeDevices(self.lock)
        self.restarts = 0
        self.tunnel_in_effect = settings.tunnelMode
        self.self_heals_run = 0
        self.last_self_heal: dict | None = None
        self.reconciles = 0
        self.reconcile_errors = 0
        self.last_reconcile: dict = {}
        self._signature: tuple = ()
        self._retry = False
        self._api = None
        self._hc = None
        self._reported: set[str] = set()
        self._live_backends: frozenset | None = None   # None: not checked since start
        self.stale_ct_removed = 0
        self.maglev_table_size = maglev_table_size
        self.lb = LbState(self.maps, self.lock)   # affinity and least-conn upkeep
        # Where Nodes, Pods, Services and EndpointSlices come from: the manifest directory,
        # or the Kubernetes API (sources.kube) where a cluster exists.
        self.source: DesiredStateSource = source or ManifestReader(paths.MANIFEST_DIR)
        self._manifests_seen: tuple = ()
        self._manifests_seen_at = self._settling_since = 0.0
        self._writer_since: float | None = None    # since when a manifest writer holds its lock
        # Policies: /policy, /identities, /flows and the flow ring buffer's reader.
        self.policy = PolicyService(node_name, lambda: self.translation and
                                    self.translation.policy)
        # Egress gateway: the other agents' liveness (health port) and the VIPs announced.
        self.egress = EgressRuntime(node_name)

    # ---------------------------------------------------------------- start-up
    def start(self) -> None:
        from ..healthcheck import HealthCheckServer

        self.datapath = loader.load(self.bpf_dir, cache=compilecache.cache_from_env())
        log.info("bpf: %s", self.datapath.summary())
        self.devices.open(self.datapath.prog_fds)
        for name in MAP_CAPACITY:
            self.maps[name] = self.datapath.open_map(name)
        self._boot_state()
        self.lb.recount()      # least-conn counts rebuilt from conntrack
        self.programmed = self._read_programmed()
        log.info("maps: inherited %s", ", ".join(
            f"{name}={len(entries)}" for name, entries in self.programmed.items()))
        for stale in loader.remove_stale_pins(self.datapath.digest):
            log.info("bpf: removed maps of an older layout: %s", stale)
        self._hc = HealthCheckServer()
        self._hc.start()
        self.policy.start(self.datapath.pin_dir)
        self.egress.start()
        self._api = api.serve(paths.AGENT_SOCKET, {
            "/status": lambda: api.json_response(self.status()),
            "/services": lambda: api.json_response(self.services()),
            "/egress": lambda: api.json_response(reporting.egress(self)),
            "/metrics": lambda: reporting.metrics_response(self),
            "/healthz": lambda: api.json_response({"ok": True}),
            **self.policy.routes(),
        })

    def _boot_state(self) -> None:
        """Restart count and the tunnel mode fixed at the first start after boot."""
        state = self.maps["agent_state"]
        starts = self.state_value(STATE_RESTARTS) + 1
        state.update(index_key(STATE_RESTARTS), U64.pack(starts))
        self.restarts = starts - 1
        codes = {v: k for k, v in TUNNEL_CODES.items()}
        fixed = codes.get(self.state_value(STATE_TUNNEL_MODE))
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

    def state_value(self, index: int) -> int:
        """A counter of the pinned `agent_state` map (kept across restarts, not reboots)."""
        raw = self.maps["agent_state"].lookup(index_key(index))
        return U64.unpack(raw)[0] if raw else 0

    def _read_programmed(self) -> dict[str, dict[bytes, bytes]]:
        return {name: dict(self.maps[name].items()) for name in MANAGED_MAPS}

    # ---------------------------------------------------------------- inputs
    def _inputs_signature(self) -> tuple:
        return (*inputs_signature(self.config_path, self.source), self.egress.revision)

    def _quick_signature(self) -> tuple:
        return (*quick_signature(self.config_path, self.source), self.egress.revision)

    def _reload_settings(self) -> None:
        try:
            settings = load_settings_file(self.config_path)
            refusal = extra_lb_refusal(settings, os.uname().release)
            if refusal:
                raise ConfigError([refusal])
        except ConfigError as exc:
            if exc.problems != self.config_problems:
                for line in exc.problems:
                    log.error("config: %s (keeping the running configuration)", line)
            self.config_problems = exc.problems
            return
        self.config_problems = []
        if settings != self.settings:
            log.info("config changed: %s", settings.effective()["settings"])
            logging.getLogger().setLevel(logging.DEBUG if settings.debugLogging else logging.INFO)
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
        return self.devices.pod_mtu(self.tunnel_in_effect)

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
        self.devices.ensure_overlay(self.tunnel_in_effect)
        translation = translate(DesiredState(self.settings_in_effect(), self.node_name,
                                             objects, cluster_cidr=self.cluster_cidr,
                                             previous_owners=previous,
                                             tunnel_ifindex=self.devices.tunnel_ifindex,
                                             maglev_table_size=self.maglev_table_size,
                                             node_addresses=self.egress.addresses(),
                                             egress=self.egress.view()))
        self._report_changes(problems + translation.problems, translation.warnings)
        ops: list[MapOp] = []
        if translation.node is not None:
            if not self.devices.ensure_node(translation, self.tunnel_in_effect,
                                            self.service_cidr):
                self._retry = True
            self._record_self_heals(self.devices.take_healed())
            ops = diff_maps(self.programmed, translation.maps)
            self._write_ops(ops)
            self.devices.sync_routes(translation, self.tunnel_in_effect, self.service_cidr)
            self._forget_gone_backends(translation)
            self._hc.update(translation.node.internal_ip, translation.health_checks)
            self.egress.apply(translation, objects, self.devices.uplink)
        if not self.devices.sync_endpoints():
            self._retry = True
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
        """Remove conntrack entries and least-conn counters of backends no longer behind any
        frontend, and affinity entries of backends their frontend no longer selects (see
        `ctgc`): at start, and whenever a backend goes away."""
        self.lb.forget_gone_affinities(translation)
        live = live_backends(translation.frontends)
        if self._live_backends is not None and live >= self._live_backends:
            self._live_backends = live
            return
        ct = self.maps["ct4"]
        stale = stale_service_keys(ct.items(), live)
        removed = sum(1 for key in stale if ct.delete(key))
        self.lb.forget_gone_counters(live)
        self._live_backends = live
        if removed:
            self.stale_ct_removed += removed
            log.info("conntrack: removed %d connections to backends that are gone; their next "
                     "packets choose a live backend", removed)

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
            write_ops(self.maps, ops)
        except Exception:
            self.programmed = self._read_programmed()  # believe what the maps hold now
            raise
        self.programmed = apply_ops(self.programmed, ops)

    # ---------------------------------------------------------------- self-healing
    def check_attachments(self) -> None:
        """Put back any program that is no longer attached where it should be."""
        if self.overlay and not self.devices.has(VXLAN_DEVICE):
            log.warning("self-heal: the VXLAN device %s is missing; recreating it",
                        VXLAN_DEVICE)
            self._retry = True         # the next reconcile makes it and reprograms its index
        self._record_self_heals([*self.devices.take_healed(),
                                 *self.devices.restore_attachments()])

    def _record_self_heals(self, restored_programs: list) -> None:
        """Count and log programs put back where this agent had attached them."""
        for restored in restored_programs:
            att = restored.attachment
            total = self.state_value(STATE_SELF_HEALS) + 1
            self.maps["agent_state"].update(index_key(STATE_SELF_HEALS), U64.pack(total))
            with self.lock:
                self.self_heals_run += 1
                self.last_self_heal = {"at": time.time(), "device": att.device,
                                       "direction": att.direction, "program": att.program,
                                       "found": restored.found}
            log.warning("self-heal: %s %s program %s was missing (found: %s); restored "
                        "(self-heals since boot: %d)", att.device, att.direction, att.program,
                        restored.found or "nothing", total)

    # ---------------------------------------------------------------- reporting
    def status(self) -> dict:
        return reporting.status(self)

    def services(self) -> dict:
        return reporting.services(self)

    # ---------------------------------------------------------------- loop
    def _manifests_settling(self, now: float) -> bool:
        """Whether the desired state is mid-change: a writer holds the manifest write lock
        (for at most WRITER_MAX_SECONDS: a hung writer must not freeze the node), or the
        manifest directory changed less than SETTLE_SECONDS ago (and has not kept changing
        for SETTLE_MAX_SECONDS). A sync of thousands of files is then reconciled once,
        whole, instead of several times half-written while it competes with the writer."""
        current = self.source.quick_signature()
        if current != self._manifests_seen:
            if self._manifests_seen_at + SETTLE_SECONDS < now:
                self._settling_since = now
            self._manifests_seen, self._manifests_seen_at = current, now
        if self.source.writer_active():
            if self._writer_since is None:
                self._writer_since = now
            if now - self._writer_since < self.writer_max_seconds:
                return True
        else:
            self._writer_since = None
        return (now - self._manifests_seen_at < SETTLE_SECONDS
                and now - self._settling_since < SETTLE_MAX_SECONDS)

    def run(self) -> None:
        next_check = next_status = 0.0
        quick: tuple = ()
        while not self.stop_event.is_set():
            # A full scan stats every file (edits in place): paced by its cost. Files added,
            # removed or renamed (atomic writes) change the directory: seen at once.
            now = time.monotonic()
            if self._manifests_settling(now) and not self._retry:
                self.stop_event.wait(self.tick / 2)
                continue
            if self.scan_pacer.due(now) or self._quick_signature() != quick or self._retry:
                quick = self._quick_signature()
                signature = self._inputs_signature()
                self.scan_pacer.ran(now, time.monotonic())
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
                next_check = now + self.attach_check_seconds
            if now >= next_status:
                with contextlib.suppress(Exception):
                    paths.write_json_atomic(paths.AGENT_STATUS, self.status())
                next_status = now + self.status_file_seconds
            self.lb.tick(self.translation.frontends if self.translation else [])
            self.stop_event.wait(self.tick)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        """Stop serving; the datapath stays in place (programs attached, maps pinned)."""
        self.source.close()
        self.policy.close()
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.AGENT_SOCKET)
        if self._hc is not None:
            self._hc.stop()
        self.egress.stop()
        for bpf_map in self.maps.values():
            bpf_map.close()
        self.devices.close()
