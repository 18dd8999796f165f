"""`cni-cilium agent`: the process around the reconcile loop: config, logging, the
one-agent lock, the desired-state source, start-up errors recorded for installers, signals.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import time

from .. import pacing, paths
from ..config import ConfigError, load_settings_file
from ..datapath import loader
from ..maglev import DEFAULT_TABLE_SIZE
from ..preflight import extra_lb_refusal
from ..sources import DesiredStateSource
from ..translate import DEFAULT_CLUSTER_CIDR, DEFAULT_SERVICE_CIDR
from .inputs import ManifestReader
from .reconcile import Agent

log = logging.getLogger("cni-cilium.agent")


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
    from ..sources.kube import KubeSource, load_api_client

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
        kubeconfig: str | None = None, maglev_table_size: int = DEFAULT_TABLE_SIZE) -> int:
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
    try:
        pacing.time_scale()
    except ValueError as exc:     # checked before anything starts: one clear line
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", flush=True)
        return 2
    refusal = extra_lb_refusal(settings, os.uname().release)
    if refusal:
        # As preflight says: no start, and the reason where `wait-ready` reads it.
        log.error("cannot start: %s", refusal)
        print(f"error: {refusal}", flush=True)
        paths.write_json_atomic(paths.AGENT_START_ERROR, {"error": refusal, "node": node_name,
                                                          "time": time.time()})
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
                      source=desired, maglev_table_size=maglev_table_size)
        agent.start()
    except (loader.LoadError, OSError) as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", flush=True)
        desired.close()
        # No agent runs: no status, but the reason, so a waiting installer stops at once.
        for stale in (paths.AGENT_PID, paths.AGENT_STATUS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        paths.write_json_atomic(paths.AGENT_START_ERROR, {"error": str(exc), "node": node_name,
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
