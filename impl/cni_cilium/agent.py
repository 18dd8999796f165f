"""The node agent's main loop.

Foundation stub: validates the config, records its pid and a status file, and runs until
SIGTERM. The datapath issue replaces the loop body with the reconcile loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time

from . import paths
from .config import ConfigError, load_settings_file

log = logging.getLogger("cni-cilium.agent")


def write_json_atomic(path: str, doc: dict) -> None:
    """Write JSON so readers never see a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def run(config_path: str = paths.CONFIG, node_name: str | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_settings_file(config_path)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("config: %s", line)
        return 2
    node_name = node_name or socket.gethostname()
    os.makedirs(paths.RUN_DIR, exist_ok=True)
    with open(paths.AGENT_PID, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        log.info("signal %d: stopping", signum)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.time()
    log.info("agent started on node %s with %s", node_name, settings.effective()["effective"])
    while not stopping:
        write_json_atomic(paths.AGENT_STATUS, {
            "node": node_name, "pid": os.getpid(), "state": "running", "started": started,
            "config": settings.effective()})
        time.sleep(1)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.AGENT_PID)
    return 0
