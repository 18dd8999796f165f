"""The node's devices as the datapath needs them: host devices, the uplink, the VXLAN
device, the programs attached at every hook (uplink, cilium_host, each pod's veth), the
agent's routes, and the self-healing of attachments. Every netlink call goes through
`cni_cilium.datapath` (links, tc, routes, vxlan, hostdev).

A new device-level concern (an egress gateway's addresses, another hook) belongs here:
the reconcile loop calls `ensure_node`, `sync_routes` and `sync_endpoints` with the
translation it computed, and `restore_attachments` on its attachment-check tick.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .. import paths
from ..datapath import links, routes, tc, vxlan
from ..datapath.hostdev import HOST_DEV, ensure_host_devices, gateway_of
from ..translate import Translation, diff_routes
from ..tunnel import DEFAULT_UPLINK_MTU, VXLAN_DEVICE, pod_mtu, uses_overlay
from .inputs import EndpointRecord, endpoint_ids, mark_endpoint_ready, read_endpoint

log = logging.getLogger("cni-cilium.agent")


@dataclass(frozen=True)
class Restored:
    """A program the attachment check put back, and what it found there instead."""

    attachment: tc.Attachment
    found: str | None


class NodeDevices:
    """The devices one agent keeps in shape; `open` before use, `close` at the end."""

    def __init__(self, lock: threading.RLock):
        self.lock = lock                   # the agent's: status readers see a whole state
        self.prog_fds: dict[str, int] = {}
        self.expected: dict[tuple[str, str], tc.Attachment] = {}
        self.device_errors: dict[str, str] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.uplink: str | None = None
        self.uplink_mtu = DEFAULT_UPLINK_MTU
        self.tunnel_ifindex = 0
        self.network_state: dict = {}
        self._ipr = None
        self._attached_by_me: set[tuple[str, str]] = set()
        self._healed: list[Restored] = []       # put back by `attach`, for the agent to count

    def open(self, prog_fds: dict[str, int]) -> None:
        """Hold a netlink socket and the loaded programs' fds."""
        self._ipr = links.open_netlink()
        self.prog_fds = prog_fds

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()

    def pod_mtu(self, tunnel_mode: str) -> int:
        return pod_mtu(tunnel_mode, self.uplink_mtu)

    def has(self, device: str) -> bool:
        return links.ifindex(self._ipr, device) is not None

    # ---------------------------------------------------------------- node
    def ensure_overlay(self, tunnel_mode: str) -> None:
        """VXLAN mode: the overlay device exists (its index goes into the translation)."""
        if uses_overlay(tunnel_mode):
            self.tunnel_ifindex = vxlan.ensure_device(self._ipr, self.pod_mtu(tunnel_mode))

    def ensure_node(self, translation: Translation, tunnel_mode: str,
                    service_cidr: str) -> bool:
        """Host devices, uplink and host programs, the service route. False when the node
        is not ready for them yet (no device holds the InternalIP): retry later."""
        node = translation.node
        ensure_host_devices(node.pod_cidr)
        uplink = links.device_with_address(self._ipr, node.internal_ip)
        if uplink is None:
            self.device_errors["uplink"] = f"no device holds the InternalIP {node.internal_ip}"
            return False
        self.device_errors.pop("uplink", None)
        if uplink != self.uplink:
            log.info("uplink: %s (InternalIP %s)", uplink, node.internal_ip)
        self.uplink = uplink
        self.uplink_mtu = links.mtu(self._ipr, links.ifindex(self._ipr, uplink))
        attachments = [tc.Attachment(uplink, tc.INGRESS, "from_netdev"),
                       tc.Attachment(uplink, tc.EGRESS, "to_netdev"),
                       tc.Attachment(HOST_DEV, tc.EGRESS, "from_host")]
        if uses_overlay(tunnel_mode):
            # The MTU follows the uplink's.
            vxlan.ensure_device(self._ipr, self.pod_mtu(tunnel_mode))
            attachments.append(tc.Attachment(VXLAN_DEVICE, tc.INGRESS, "from_overlay"))
        for att in attachments:
            self.attach(att)
        self._write_network_state(tunnel_mode)
        host_idx = links.ifindex(self._ipr, HOST_DEV)
        if host_idx is not None:
            # Service addresses have no neighbour: without NOARP the node's own packets to a
            # ClusterIP would wait for an ARP answer and never reach from_host.
            links.set_noarp(self._ipr, host_idx)
            routes.replace_dev(self._ipr, service_cidr, host_idx, gateway_of(node.pod_cidr))
        return True

    def _write_network_state(self, tunnel_mode: str) -> None:
        """Tell the CNI plugin the mode in effect and the MTU its pods get."""
        doc = {"tunnelMode": tunnel_mode, "podMTU": self.pod_mtu(tunnel_mode),
               "uplink": self.uplink, "uplinkMTU": self.uplink_mtu}
        if doc != self.network_state:
            paths.write_json_atomic(paths.NETWORK_STATE, doc)
            self.network_state = doc

    # ---------------------------------------------------------------- attachments
    def attach(self, att: tc.Attachment) -> bool:
        """Attach (replace) a program unless it is already ours at that hook; False when
        the device does not exist (yet)."""
        with self.lock:
            self.expected[(att.device, att.direction)] = att
        ifindex = links.ifindex(self._ipr, att.device)
        if ifindex is None:
            return False
        # A filter left by a previous agent has our name but runs old code: replace it once.
        ours = (att.device, att.direction) in self._attached_by_me
        found = tc.attached_name(self._ipr, ifindex, att.direction)
        if ours and found == tc.filter_name(att.program):
            return True
        tc.attach(self._ipr, ifindex, att.direction, self.prog_fds[att.program], att.program)
        self._attached_by_me.add((att.device, att.direction))
        if ours:
            # Attached by this agent and gone since: a self-heal, whichever path (reconcile
            # or the attachment check) got there first.
            with self.lock:
                self._healed.append(Restored(att, found))
        return True

    def take_healed(self) -> list[Restored]:
        """The programs `attach` put back since the last call (then forgotten)."""
        with self.lock:
            healed, self._healed = self._healed, []
        return healed

    def restore_attachments(self) -> list[Restored]:
        """Put back any program that is no longer attached where it should be."""
        with self.lock:
            expected = list(self.expected.values())
        restored = []
        for att in expected:
            ifindex = links.ifindex(self._ipr, att.device)
            if ifindex is None:
                continue  # device gone: its endpoint removal follows (or its re-creation)
            found = tc.attached_name(self._ipr, ifindex, att.direction)
            if found == tc.filter_name(att.program):
                continue
            try:
                tc.attach(self._ipr, ifindex, att.direction, self.prog_fds[att.program],
                          att.program)
            except tc.TcError as exc:
                log.error("self-heal: %s %s: cannot restore %s: %s", att.device,
                          att.direction, att.program, exc)
                continue
            restored.append(Restored(att, found))
        return restored

    def attachment_view(self) -> dict[str, dict]:
        """Per device, each expected program and what is attached (for status; any thread)."""
        devices: dict[str, dict] = {}
        with self.lock:
            expected = list(self.expected.values())
        with links.open_netlink() as ipr:  # the calling thread's own netlink socket
            for att in expected:
                idx = links.ifindex(ipr, att.device)
                found = tc.attached_name(ipr, idx, att.direction) if idx is not None else None
                entry = devices.setdefault(att.device, {"attached": {}, "ok": True})
                entry["attached"][att.direction] = {
                    "program": att.program, "ok": found == tc.filter_name(att.program),
                    "found": found}
                entry["ok"] = entry["ok"] and found == tc.filter_name(att.program)
        return devices

    # ---------------------------------------------------------------- routes
    def sync_routes(self, translation: Translation, tunnel_mode: str,
                    service_cidr: str) -> None:
        """Other nodes' pod CIDRs via their InternalIP (native routing) or into the overlay."""
        current = routes.node_routes(self._ipr)
        upsert, delete = diff_routes(current, translation.node_routes)
        for cidr, via in upsert.items():
            log.info("route: %s via %s", cidr, via)
            routes.replace_via(self._ipr, cidr, via)
        for cidr in delete:
            log.info("route: %s removed (node gone)", cidr)
            routes.delete(self._ipr, cidr)
        self._sync_tunnel_routes(translation, self.pod_mtu(tunnel_mode), service_cidr)

    def _sync_tunnel_routes(self, translation: Translation, mtu: int,
                            service_cidr: str) -> None:
        """VXLAN: other nodes' pod CIDRs via cilium_host (whose program encapsulates), with
        the overlay's MTU and this node's InternalIP as the source of its own connections."""
        host_idx = links.ifindex(self._ipr, HOST_DEV)
        if host_idx is None:
            return
        node_ip = translation.node.internal_ip
        current = {cidr: attrs for cidr, attrs in routes.dev_routes(self._ipr, host_idx).items()
                   if cidr != service_cidr}
        wanted = {cidr: (node_ip, mtu) for cidr in translation.tunnel_routes}
        upsert, delete = diff_routes(current, wanted)
        for cidr in upsert:
            log.info("route: %s into the overlay (node %s, mtu %d)", cidr,
                     translation.tunnel_routes[cidr], mtu)
            routes.replace_dev(self._ipr, cidr, host_idx, node_ip, mtu)
        for cidr in delete:
            log.info("route: %s removed from the overlay (node gone)", cidr)
            routes.delete(self._ipr, cidr)

    # ---------------------------------------------------------------- endpoints
    def sync_endpoints(self) -> bool:
        """Programs on every pod's veth (then the endpoint is marked ready for the CNI
        plugin); removed endpoints forgotten. False when one must be tried again."""
        complete = True
        seen = set(endpoint_ids())
        for cid in sorted(seen):
            record = self.endpoints.get(cid)
            if record is not None and record.ready:
                continue
            try:
                record = read_endpoint(cid)
            except (OSError, ValueError, KeyError) as exc:
                complete = False
                log.warning("endpoint %s.json: unreadable (%s); retrying", cid, exc)
                continue
            if (self.attach(tc.Attachment(record.device, tc.INGRESS, "from_container"))
                    and self.attach(tc.Attachment(record.device, tc.EGRESS, "to_container"))):
                mark_endpoint_ready(cid, time.time())
                record.ready = True
                record.error = ""
                log.info("endpoint %s (%s, %s): programs attached to %s", cid[:12], record.pod,
                         record.ip, record.device)
            else:
                record.error = f"device {record.device} not found"
                complete = False
            with self.lock:
                self.endpoints[cid] = record
        with self.lock:
            for cid in set(self.endpoints) - seen:
                record = self.endpoints.pop(cid)
                log.info("endpoint %s (%s) removed", cid[:12], record.pod)
                for direction in (tc.INGRESS, tc.EGRESS):
                    self.expected.pop((record.device, direction), None)
                    self._attached_by_me.discard((record.device, direction))
        return complete
