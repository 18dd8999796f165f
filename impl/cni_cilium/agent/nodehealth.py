"""Agents learn each other's liveness without a shared API (edge).

Every agent serves a small JSON document on its node's InternalIP, port 4240 (Cilium's
health port): its node name, its uplink's MAC, the primary IPv4 address of each of its
interfaces, every IPv4 address it has, the VIPs it announces and whom it elected for each
egress gateway. It polls every other
node's document every `egress.POLL_SECONDS` (all peers at once, each with a short
timeout); `egress.ReadinessTracker` turns answers and misses into ready / not ready, so when
a node or its agent dies every surviving agent re-elects the egress gateways within a few
seconds (`egress.MISSES` polls). `revision` changes whenever what the agents know changes
(a peer's readiness or document, this node's addresses): the agent reconciles then.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping

from .. import pacing
from ..datapath import links
from ..egress import (
    HEALTH_PORT,
    HOLD,
    POLL_SECONDS,
    POLL_TIMEOUT,
    EgressView,
    PeerState,
    ReadinessTracker,
)

log = logging.getLogger("cni-cilium.nodehealth")

class NodeHealth:
    """This node's health server and its poller of the other nodes (see module doc)."""

    def __init__(self, node_name: str, port: int = HEALTH_PORT):
        self.node_name = node_name
        self.port = port
        self.revision = 0
        self.polls = 0
        self.poll_seconds = pacing.paced(POLL_SECONDS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tracker = ReadinessTracker()
        self._node_ip = ""
        self._uplink = ""
        self._peers: dict[str, str] = {}          # other node -> InternalIP
        self._docs: dict[str, dict] = {}          # last document each peer served
        self._doc: dict = {"node": node_name}
        self._announcing: tuple[str, ...] = ()
        self._active: dict[str, str] = {}
        self._addresses: tuple[str, ...] = ()
        self._rounds = 0
        self._view = EgressView(settled=False)
        self._server: ThreadingHTTPServer | None = None
        self._server_error = ""
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-poll")
        self._thread = threading.Thread(target=self._run, name="nodehealth", daemon=True)

    # ------------------------------------------------------------ agent side

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self._pool.shutdown(wait=False)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def configure(self, node_ip: str, uplink: str, peers: Mapping[str, str]) -> None:
        """This node's InternalIP and uplink, and the other nodes (name -> InternalIP)."""
        with self._lock:
            self._node_ip, self._uplink = node_ip, uplink
            self._peers = {n: ip for n, ip in peers.items() if n != self.node_name}

    def publish(self, announcing: tuple[str, ...], active: Mapping[str, str | None]) -> None:
        """What this agent serves about itself: the VIPs it answers ARP for, and the active
        node it elected per gateway (its peers keep that node while it is eligible)."""
        with self._lock:
            self._announcing = tuple(sorted(announcing))
            self._active = {gw: node for gw, node in active.items() if node}
            self._doc = {**self._doc, "announcing": list(self._announcing),
                         "active": dict(self._active)}

    def view(self) -> EgressView:
        with self._lock:
            return self._view

    def addresses(self) -> tuple[str, ...]:
        with self._lock:
            return self._addresses

    def status(self) -> dict:
        with self._lock:
            return {"port": self.port, "listening": self._server is not None,
                    "error": self._server_error or None, "settled": self._view.settled,
                    "polls": self.polls,
                    "peers": {n: p.to_dict() for n, p in sorted(self._view.peers.items())}}

    # ------------------------------------------------------------ serving

    def _document(self) -> dict:
        with self._lock:
            return dict(self._doc)

    def _ensure_server(self, node_ip: str) -> None:
        if self._server is not None and self._server.server_address[0] == node_ip:
            return
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(health._document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                return

        try:
            server = ThreadingHTTPServer((node_ip, self.port), Handler)
        except OSError as exc:
            if self._server_error != str(exc):
                log.error("health endpoint %s:%d: cannot listen: %s", node_ip, self.port, exc)
            self._server_error = str(exc)
            return
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="health-server",
                         daemon=True).start()
        self._server, self._server_error = server, ""
        log.info("health endpoint listening on %s:%d", node_ip, self.port)

    # ------------------------------------------------------------ polling

    def _poll(self, name: str, ip: str) -> tuple[str, dict | None, str]:
        conn = http.client.HTTPConnection(ip, self.port, timeout=POLL_TIMEOUT)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            if doc.get("node") != name:
                return name, None, f"{ip}:{self.port} answered as node {doc.get('node')!r}"
            return name, doc, ""
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return name, None, str(exc) or type(exc).__name__
        finally:
            conn.close()

    def _round(self, ipr) -> None:
        interfaces, addresses = links.node_interfaces(ipr)
        with self._lock:
            node_ip, uplink, peers = self._node_ip, self._uplink, dict(self._peers)
            mac = links.interface_mac(uplink) if uplink else ""
            self._doc = {"node": self.node_name, "mac": mac, "uplink": uplink,
                         "interfaces": interfaces,
                         "addresses": list(addresses), "announcing": list(self._announcing),
                         "active": dict(self._active), "time": time.time()}
        if node_ip:
            self._ensure_server(node_ip)
        futures = [self._pool.submit(self._poll, n, ip) for n, ip in sorted(peers.items())]
        done, _pending = wait(futures, timeout=POLL_TIMEOUT + 0.5)
        results = [f.result() for f in done]
        answered = {name for name, _doc, _err in results}
        results += [(n, None, "no answer in time") for n in peers if n not in answered]
        changed = False
        for name, doc, error in results:
            if self._tracker.record(name, doc is not None, error):
                log.warning("health: node %s is now %s%s", name,
                            "ready" if self._tracker.ready(name) else "NOT ready",
                            f" ({error})" if error else "")
                changed = True
            if doc is not None:
                self._docs[name] = doc
        # This agent counts itself ready as its peers would: serving its document.
        self._tracker.record(self.node_name, self._server is not None,
                             self._server_error or "health endpoint not listening yet")
        self._tracker.forget([*peers, self.node_name])
        self._rounds += 1
        own = self._document()
        states = {self.node_name: self._state(self.node_name, own)}
        for name in peers:
            states[name] = self._state(name, self._docs.get(name, {}))
        view = EgressView(settled=self._rounds >= HOLD, peers=states)
        with self._lock:
            self.polls += 1
            if view != self._view or addresses != self._addresses or changed:
                self._view, self._addresses = view, addresses
                self.revision += 1

    def _state(self, name: str, doc: dict) -> PeerState:
        return PeerState(name, self._tracker.ready(name), str(doc.get("mac", "")),
                         dict(doc.get("interfaces") or {}), tuple(doc.get("announcing") or ()),
                         dict(doc.get("active") or {}), self._tracker.reason(name))

    def _run(self) -> None:
        with links.open_netlink() as ipr:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self._round(ipr)
                except Exception:  # keep polling; the log says what broke
                    log.exception("health round failed")
                with contextlib.suppress(ValueError):
                    self._stop.wait(max(0.05, self.poll_seconds - (time.monotonic() - started)))
