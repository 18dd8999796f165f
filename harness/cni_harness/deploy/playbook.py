"""Deploy with Ansible: `playbooks/site.yml` run through ansible-runner against a provider's
inventory (the same playbook for namespace nodes and VMs; only inventory variables differ).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import PROJECT_ROOT
from ..timescale import scaled

PLAYBOOK_DIR = os.path.join(PROJECT_ROOT, "playbooks")
SITE = "site.yml"
REBOOT = "reboot.yml"
CONFIG_NAME = "config.yaml"


@dataclass
class DeployResult:
    rc: int
    status: str
    seconds: float
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_tasks: list[str] = field(default_factory=list)
    # Every task result that changed something, in the order it happened:
    # {"host", "task", "play", "start", "end"} (ISO times from Ansible).
    changes: list[dict] = field(default_factory=list)

    def changed_by(self, task: str) -> list[dict]:
        """The changes a task (by name) made, in order."""
        return [c for c in self.changes if c["task"] == task]

    @property
    def changed(self) -> int:
        return sum(self.stats.get("changed", {}).values())

    def to_dict(self) -> dict:
        return {"rc": self.rc, "status": self.status, "seconds": round(self.seconds, 2),
                "changed": self.changed, "stats": self.stats, "failedTasks": self.failed_tasks,
                "changes": self.changes}


def record_config(state_dir: str, path: str) -> str:
    """Keep a cluster's ModuleConfig (from `cluster up --config`) for later deploys."""
    dest = os.path.join(state_dir, CONFIG_NAME)
    shutil.copyfile(path, dest)
    return dest


def recorded_config(state_dir: str) -> str | None:
    path = os.path.join(state_dir, CONFIG_NAME)
    return path if os.path.exists(path) else None


# Mitogen keeps one Python interpreter per node for the whole run, where the default
# strategy starts Python and compiles Ansible's module code for every task: 1.7-2x faster
# natively, and what makes a deploy in an emulated (TCG) guest affordable.
STRATEGY_ENV = "CNI_HARNESS_ANSIBLE_STRATEGY"
CONNECT_TIMEOUT = 30.0  # seconds, native; scaled by CNI_HARNESS_TIME_SCALE


def strategy_env(requested: str | None = None) -> dict[str, str]:
    """The Ansible environment selecting the execution strategy: `mitogen` (the default
    when installed) or `linear` (Ansible's own: the fallback, and a choice through
    $CNI_HARNESS_ANSIBLE_STRATEGY)."""
    choice = (requested or os.environ.get(STRATEGY_ENV) or "mitogen").lower()
    if choice not in ("mitogen", "linear"):
        raise ValueError(f"{STRATEGY_ENV}={choice!r}: expected mitogen or linear")
    if choice == "linear":
        return {"ANSIBLE_STRATEGY": "linear"}
    try:
        import ansible_mitogen
    except ImportError:
        return {"ANSIBLE_STRATEGY": "linear"}
    plugins = os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy")
    return {"ANSIBLE_STRATEGY_PLUGINS": plugins, "ANSIBLE_STRATEGY": "mitogen_linear"}


def run_playbook(provider: Any, playbook: str = SITE, config: str | None = None,
                 extravars: dict | None = None, verbose: bool = False,
                 progress: Callable[[str], None] | None = None) -> DeployResult:
    """Run a playbook of playbooks/ against the provider's inventory."""
    import ansible_runner

    extra = dict(extravars or {})
    config = config or recorded_config(provider.state_dir)
    if config:
        extra["cni_cilium_config_file"] = os.path.abspath(config)
    venv_bin = os.path.dirname(sys.executable)
    env = {
        "ANSIBLE_CONFIG": os.path.join(PLAYBOOK_DIR, "ansible.cfg"),
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),  # ansible-playbook
        "ANSIBLE_FORCE_COLOR": "0",
        # Connecting includes starting the remote interpreter (Mitogen's bootstrap), which
        # an emulated guest takes far longer than Ansible's default 10 s to do.
        "ANSIBLE_TIMEOUT": str(int(scaled(CONNECT_TIMEOUT))),
        **strategy_env(),
    }

    changes: list[dict] = []

    def on_event(event: dict) -> bool:
        data = event.get("event_data", {})
        if progress and event.get("event") == "playbook_on_task_start":
            progress(f"[{playbook}] {data.get('task')}")
        if event.get("event") == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            changes.append({"host": data.get("host"), "task": data.get("task"),
                            "play": data.get("play"), "start": data.get("start"),
                            "end": data.get("end")})
            if progress:
                progress(f"[{playbook}] {data.get('host')}: changed: {data.get('task')}")
        return True

    private_dir = os.path.join(provider.state_dir, "ansible-runner")
    os.makedirs(private_dir, exist_ok=True)
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=private_dir,
        project_dir=PLAYBOOK_DIR, playbook=playbook, inventory=provider.inventory_path(),
        extravars=extra, envvars=env, quiet=not verbose, rotate_artifacts=3,
        event_handler=on_event)
    failed = []
    for event in runner.events:
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and \
                not event.get("event_data", {}).get("ignore_errors"):
            data = event["event_data"]
            msg = (data.get("res") or {}).get("msg", "")
            failed.append(f"{data.get('host')}: {data.get('task')}: {msg}".strip())
    stats = {k: dict(v) for k, v in (runner.stats or {}).items() if isinstance(v, dict)}
    return DeployResult(runner.rc, runner.status, time.monotonic() - started, stats, failed,
                        changes)
