"""The `vagrant` provider: one matrix.yaml OS entry as N VMs, through python-vagrant.

Layers, pure first:
- `plan()` turns a matrix entry into what a run would do (box, nodes, addresses, the
  playbook steps for the entry's OS family); `--dry-run` prints it and nothing else.
- `cluster_spec()` is the JSON the committed `vms/Vagrantfile` reads, so the machines come from
  matrix.yaml through one generator; `write_definition()` puts the pair in a run directory.
- Parsers for what Vagrant prints (`ssh-config`, `box list --machine-readable`) and the
  Ansible inventory built from them.
- `check_host()` and `VagrantProvider` are the edge: subprocess, python-vagrant and ssh.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import yaml

from cni_cilium.config import settings_from_mapping
from cni_cilium.preflight import evaluate

from .. import PROJECT_ROOT
from ..deploy.inventory import render_inventory
from ..matrix.matrix import VAGRANT_PROVIDERS, OsEntry
from .base import (
    Availability,
    NodeInfo,
    Provider,
    ProviderUnavailable,
    put_file_script,
    run_text,
)

VMS_DIR = os.path.join(PROJECT_ROOT, "vms")
VAGRANTFILE = os.path.join(VMS_DIR, "Vagrantfile")
PLAYBOOK_DIR = os.path.join(PROJECT_ROOT, "playbooks")
SITE_PLAYBOOK = os.path.join(PLAYBOOK_DIR, "site.yml")
KERNEL_ROLE = os.path.join(PLAYBOOK_DIR, "roles", "kernel")
INSTALL_ROLE = os.path.join(PLAYBOOK_DIR, "roles", "install")
DEFAULT_WORKDIR = os.path.join(PROJECT_ROOT, ".state", "vagrant")

# VirtualBox (>= 6.1.28) only allows host-only networks inside 192.168.56.0/21 unless the
# host's /etc/vbox/networks.conf says otherwise; libvirt takes any private range. Each entry
# gets its own /26 of it (by its position in matrix.yaml) so entries can run side by side.
NODE_NETWORK_POOL = ipaddress.IPv4Network("192.168.56.0/21")
ENTRY_PREFIXLEN = 26
NODE_HOST_OFFSET = 10            # node i (1-based) is the subnet's address 10 + i
POD_CIDR_POOL = ipaddress.IPv4Network("10.100.0.0/16")   # node i gets 10.100.i.0/24
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"

# Ansible's ansible_os_family for each os-release ID the matrix uses.
OS_FAMILIES = {"ubuntu": "Debian", "debian": "Debian", "centos": "RedHat", "rhel": "RedHat",
               "rocky": "RedHat", "almalinux": "RedHat"}


class PlanError(ValueError):
    """An entry or an option cannot be planned; the message says which and why."""


@dataclass(frozen=True)
class PlannedNode:
    name: str
    role: str                    # control-plane | worker
    ip: str                      # InternalIP on the entry's private network
    pod_cidr: str

    def to_info(self) -> NodeInfo:
        labels = {"kubernetes.io/hostname": self.name}
        if self.role == "control-plane":
            labels[CONTROL_PLANE_LABEL] = ""
        return NodeInfo(self.name, self.ip, self.pod_cidr, labels, uplink="")


@dataclass(frozen=True)
class EntryPlan:
    """What `matrix run --provider vagrant` would do for one OS entry."""

    entry: str
    provider: str
    box: str
    boxes: dict[str, str]
    os_family: str
    kernel_source: str
    kernel_package: str
    kernel_release: str
    network: str
    nodes: tuple[PlannedNode, ...]
    expected: dict[str, str]              # profile -> supported | unsupported
    preflight: dict[str, Any]             # the rule verdict for the profile of the run
    steps: tuple[str, ...]
    memory_mib: int = 2048
    cpus: int = 2
    libvirt_driver: str = "kvm"

    @property
    def prefix(self) -> str:
        """Names the VMs of this entry carry in libvirt/VirtualBox."""
        return f"cni-{self.entry}"

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["nodes"] = [asdict(n) for n in self.nodes]
        doc["steps"] = list(self.steps)
        return doc


def os_family(entry: OsEntry) -> str:
    """Ansible's os_family of an entry ("Debian" or "RedHat")."""
    os_id = entry.os_release.get("ID", "").lower()
    try:
        return OS_FAMILIES[os_id]
    except KeyError:
        raise PlanError(f"{entry.name}: no OS family known for ID={os_id!r}; "
                        f"known: {', '.join(sorted(OS_FAMILIES))}") from None


def entry_network(index: int) -> ipaddress.IPv4Network:
    """The private node network of the entry at `index` in matrix.yaml."""
    subnets = list(NODE_NETWORK_POOL.subnets(new_prefix=ENTRY_PREFIXLEN))
    if not 0 <= index < len(subnets):
        raise PlanError(f"entry index {index} is outside the {len(subnets)} node networks "
                        f"of {NODE_NETWORK_POOL}")
    return subnets[index]


def planned_nodes(network: ipaddress.IPv4Network, count: int) -> tuple[PlannedNode, ...]:
    """node1 (control plane) .. nodeN with their addresses (docs/architecture.md layout)."""
    if not 1 <= count <= 10:
        raise PlanError(f"node count {count} is out of range; allowed: 1-10")
    pods = list(POD_CIDR_POOL.subnets(new_prefix=24))
    return tuple(
        PlannedNode(name=f"node{i}", role="control-plane" if i == 1 else "worker",
                    ip=str(network.network_address + NODE_HOST_OFFSET + i),
                    pod_cidr=str(pods[i]))
        for i in range(1, count + 1))


def _load_yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def kernel_role_vars(family: str, role_dir: str = KERNEL_ROLE) -> dict[str, Any]:
    """The kernel role's variables for an OS family, read from the role itself."""
    families = _load_yaml(os.path.join(role_dir, "vars", "main.yml"))["kernel_families"]
    if family not in families:
        raise PlanError(f"the kernel role has no variables for OS family {family!r}")
    doc = dict(_load_yaml(os.path.join(role_dir, "defaults", "main.yml")))
    doc.update(_load_yaml(os.path.join(role_dir, "vars", f"{families[family]}.yml")))
    return doc


def kernel_steps(entry: OsEntry, family: str) -> list[str]:
    """What the kernel role does on this entry, in order."""
    steps: list[str] = []
    if family == "Debian":
        if entry.kernel_source == "hwe":
            steps += [f"kernel: apt install --install-recommends {entry.kernel_package}",
                      "kernel: reboot into the HWE kernel, check it runs (>= 5.8)"]
        steps.append("kernel: apt install linux-headers-$(uname -r)")
    elif entry.kernel_source == "elrepo":
        steps += [
            "kernel: import the ELRepo key, declare the elrepo-kernel repository",
            f"kernel: install {entry.kernel_package} {entry.kernel_package}-devel",
            f"kernel: grubby --set-default the newest {entry.kernel_package}",
            "kernel: reboot into the ELRepo kernel, check it runs"]
    return steps


def install_packages(family: str, role_dir: str = INSTALL_ROLE) -> list[str]:
    """The distribution packages the install role puts on a host of this OS family."""
    doc = _load_yaml(os.path.join(role_dir, "defaults", "main.yml"))
    return list(doc["install_packages_by_family"][family])


def site_roles(site_playbook: str = SITE_PLAYBOOK) -> list[str] | None:
    """The roles site.yml runs, in order; None when site.yml is not in this tree."""
    if not os.path.exists(site_playbook):
        return None
    roles: list[str] = []
    for play in _load_yaml(site_playbook) or []:
        if not isinstance(play, dict):
            continue
        if "import_playbook" in play:
            roles.append(f"playbook {play['import_playbook']}")
        for role in play.get("roles", []) or []:
            roles.append(role if isinstance(role, str) else str(role.get("role", role)))
    return roles


# The roles that apply a tunnelMode change (a no-op on a first install: the mode the agent
# first starts with after a boot is the configured one).
TUNNEL_ROLE_STEPS = {
    "tunnel_mode": "tunnel_mode: find the nodes whose agent reports a pending tunnelMode",
    "reboot": "reboot: those nodes one at a time, each until its agent runs in the new mode "
              "(none on a first install)",
}


def playbook_steps(entry: OsEntry, family: str, verdict_supported: bool,
                   site: list[str] | None) -> list[str]:
    """The deploy steps of an entry: preflight first, then the roles of site.yml in order,
    the OS-family ones (kernel, install's packages) spelled out."""
    steps = ["preflight: judge os-release + target kernel by the rules, before any change"]
    if not verdict_supported:
        return [*steps, "preflight: unsupported -> the playbook stops here, nothing changed"]
    kernel = kernel_steps(entry, family)
    if site is None:
        return [*steps, *kernel, "site.yml: not in this tree; playbooks/kernel.yml only"]
    if "kernel" not in site:
        steps += [f"{step} (playbooks/kernel.yml; site.yml lacks the kernel role)"
                  for step in kernel]
    for role in site:
        if role == "kernel":
            steps += kernel
        elif role == "install":
            steps.append(f"install: {', '.join(install_packages(family))}; the agent in "
                         "/opt/cni-cilium/venv, its systemd unit")
        elif role in TUNNEL_ROLE_STEPS:
            steps.append(TUNNEL_ROLE_STEPS[role])
        elif role != "preflight":
            steps.append(role)
    return steps


def plan(entry: OsEntry, index: int, *, provider: str = "libvirt", nodes: int | None = None,
         profile: str = "default", profile_settings: dict[str, Any] | None = None,
         memory_mib: int = 2048, cpus: int = 2, libvirt_driver: str = "kvm",
         site: list[str] | None = None, role_dir: str = KERNEL_ROLE) -> EntryPlan:
    """The dry-run plan of one OS entry (pure apart from reading the kernel role's vars)."""
    if provider not in VAGRANT_PROVIDERS:
        raise PlanError(f"unknown Vagrant provider {provider!r}; "
                        f"allowed: {', '.join(VAGRANT_PROVIDERS)}")
    if libvirt_driver not in ("kvm", "qemu"):
        raise PlanError(f"unknown libvirt driver {libvirt_driver!r}; allowed: kvm, qemu")
    if memory_mib < 1024 or cpus < 1:
        raise PlanError(f"a node needs >= 1024 MiB and >= 1 CPU (got {memory_mib} MiB, "
                        f"{cpus} CPUs)")
    family = os_family(entry)
    network = entry_network(index)
    verdict = evaluate(entry.os_release, entry.kernel_release,
                       settings_from_mapping(profile_settings or {}))
    kernel_role_vars(family, role_dir)     # the role knows the family, or PlanError
    preflight = {"profile": profile, **verdict.to_dict()}
    return EntryPlan(
        entry=entry.name, provider=provider, box=entry.boxes[provider],
        boxes=dict(entry.boxes), os_family=family, kernel_source=entry.kernel_source,
        kernel_package=entry.kernel_package, kernel_release=entry.kernel_release,
        network=str(network), nodes=planned_nodes(network, nodes or entry.nodes),
        expected=dict(entry.expect), preflight=preflight,
        steps=tuple(playbook_steps(entry, family, verdict.supported, site)),
        memory_mib=memory_mib, cpus=cpus, libvirt_driver=libvirt_driver)


def plan_matrix(entries: Sequence[OsEntry], selected: Sequence[str] = (), **options: Any
                ) -> list[EntryPlan]:
    """Plans for the selected entries (all when none are named), in matrix order."""
    known = [e.name for e in entries]
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise PlanError(f"no OS entry {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    options.setdefault("site", site_roles())
    return [plan(entry, index, **options) for index, entry in enumerate(entries)
            if not selected or entry.name in selected]


def format_plan(p: EntryPlan) -> str:
    """The human dry-run text of one entry."""
    verdict = "supported" if p.preflight["supported"] else "unsupported"
    lines = [f"{p.entry}: {p.provider} box {p.box} ({p.os_family} family, kernel "
             f"{p.kernel_source} {p.kernel_package} {p.kernel_release})",
             f"  preflight ({p.preflight['profile']}): {verdict}; matrix expects "
             f"{p.expected.get(p.preflight['profile'], '?')}",
             f"  network {p.network}, {len(p.nodes)} nodes, {p.memory_mib} MiB x {p.cpus} CPU:"]
    lines += [f"    {n.name:7} {n.role:13} {n.ip:15} pods {n.pod_cidr}" for n in p.nodes]
    lines.append("  steps:")
    suites = ["suites"] if p.preflight["supported"] else []   # a stopped deploy runs none
    lines += [f"    {i}. {step}" for i, step in enumerate(
        ["vagrant up --provider " + p.provider, *p.steps, *suites, "vagrant destroy"],
        start=1)]
    return "\n".join(lines)


# --- the generated definition -------------------------------------------------------------


def cluster_spec(p: EntryPlan) -> dict[str, Any]:
    """What vms/Vagrantfile reads from cluster.json (deterministic for a given plan)."""
    network = ipaddress.IPv4Network(p.network)
    return {
        "entry": p.entry,
        "prefix": p.prefix,
        "boxes": dict(sorted(p.boxes.items())),
        "netmask": str(network.netmask),
        "memory_mib": p.memory_mib,
        "cpus": p.cpus,
        "libvirt_driver": p.libvirt_driver,
        "boot_timeout": 600,
        "nodes": [{"name": n.name, "role": n.role, "ip": n.ip} for n in p.nodes],
    }


def write_definition(p: EntryPlan, out_dir: str, vagrantfile: str = VAGRANTFILE) -> str:
    """Write the entry's Vagrantfile and cluster.json into out_dir; returns out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(vagrantfile, os.path.join(out_dir, "Vagrantfile"))
    with open(os.path.join(out_dir, "cluster.json"), "w", encoding="utf-8") as fh:
        json.dump(cluster_spec(p), fh, indent=2, sort_keys=True)
        fh.write("\n")
    return out_dir


# --- what Vagrant prints ------------------------------------------------------------------


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """`vagrant ssh-config` output -> {host alias: {option: value}} (first value wins)."""
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip().strip('"')
        if key.lower() == "host":
            current = hosts.setdefault(value, {})
        elif current is not None:
            current.setdefault(key, value)
    return hosts


def parse_box_list(text: str) -> set[tuple[str, str]]:
    """`vagrant box list --machine-readable` -> {(box name, provider)}."""
    boxes: set[tuple[str, str]] = set()
    name = None
    for line in text.splitlines():
        parts = line.split(",", 3)
        if len(parts) < 4:
            continue
        kind, value = parts[2], parts[3]
        if kind == "box-name":
            name = value
        elif kind == "box-provider" and name is not None:
            boxes.add((name, value))
    return boxes


def inventory(p: EntryPlan, ssh_config_path: str, ssh_hosts: dict[str, dict[str, str]]
              ) -> str:
    """The Ansible inventory (YAML) of an entry's VMs, reached through ssh_config: the host
    variables every provider gives site.yml, plus the kernel role's from the matrix entry."""
    missing = [n.name for n in p.nodes if n.name not in ssh_hosts]
    if missing:
        raise PlanError(f"vagrant ssh-config has no entry for {', '.join(missing)}")
    host_vars = {n.name: {"ansible_host": n.name,     # resolved by ssh through the -F file
                          "ansible_user": ssh_hosts[n.name].get("User", "vagrant"),
                          "ansible_ssh_common_args": f"-F {shlex.quote(ssh_config_path)}"}
                 for n in p.nodes}
    group_vars: dict[str, Any] = {
        "ansible_become": True,
        "cni_provider": "vagrant",
        "cni_os_entry": p.entry,
        "cni_vagrant_provider": p.provider,
        "cni_cilium_init": "systemd",
        "cni_cilium_manage_packages": True,
        "kernel_manage": True,
        "kernel_source": p.kernel_source,
        "kernel_package": p.kernel_package,
        "kernel_release": p.kernel_release,
    }
    if p.kernel_source != "stock":
        # The box boots its stock kernel; preflight must judge the kernel the kernel role is
        # about to install, or it would stop HWE/ELRepo entries before anything could change.
        group_vars["preflight_kernel_release"] = p.kernel_release
    return render_inventory([n.to_info() for n in p.nodes], group_vars, host_vars)


# --- the host ---------------------------------------------------------------------------

LIBVIRT_SOCKETS = ("/var/run/libvirt/libvirt-sock", "/run/libvirt/libvirt-sock",
                   "/var/run/libvirt/virtqemud-sock", "/run/libvirt/virtqemud-sock")


def _run(argv: Sequence[str], timeout: float = 60, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def installed_boxes(env: dict | None = None) -> set[tuple[str, str]]:
    """Boxes Vagrant has locally, as (name, provider)."""
    result = _run(["vagrant", "box", "list", "--machine-readable"], env=env)
    return parse_box_list(result.stdout) if result.returncode == 0 else set()


def check_host(provider: str = "libvirt", boxes: Sequence[str] = (),
               libvirt_driver: str = "kvm", env: dict | None = None) -> Availability:
    """What this host lacks to bring Vagrant VMs up (no side effects).

    Boxes count as missing: a nightly run must not start a multi-GiB download halfway.
    """
    missing: list[str] = []
    if shutil.which("vagrant") is None:
        return Availability(False, ("vagrant (apt-get install vagrant)",))
    if provider == "libvirt":
        if not provider_loadable(provider, env):
            missing.append("the vagrant-libvirt plugin (apt-get install vagrant-libvirt)")
        if not any(os.path.exists(s) for s in LIBVIRT_SOCKETS):
            missing.append("a running libvirtd (apt-get install libvirt-daemon-system; "
                           "no libvirt socket in /run/libvirt)")
        if libvirt_driver == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            missing.append("hardware virtualization (/dev/kvm); or plan with "
                           "--libvirt-driver qemu to run under TCG")
    elif provider == "virtualbox":
        if shutil.which("VBoxManage") is None:
            missing.append("VirtualBox (VBoxManage not on PATH)")
    else:
        missing.append(f"a known Vagrant provider (got {provider!r}; "
                       f"allowed: {', '.join(VAGRANT_PROVIDERS)})")
    if boxes:
        have = installed_boxes(env)
        for box in boxes:
            if (box, provider) not in have:
                missing.append(f"box {box} for {provider} "
                               f"(vagrant box add {box} --provider {provider})")
    return Availability(not missing, tuple(missing))


def vagrant_env(provider: str, base: dict | None = None) -> dict[str, str]:
    """The environment Vagrant runs with: the provider chosen explicitly, no update checks."""
    env = dict(os.environ if base is None else base)
    env["VAGRANT_DEFAULT_PROVIDER"] = provider
    env["VAGRANT_CHECKPOINT_DISABLE"] = "1"
    env["VAGRANT_NO_COLOR"] = "1"
    return env


def provider_loadable(provider: str, env: dict | None = None) -> bool:
    """Whether Vagrant can load the provider here, so `validate` can check its block too."""
    if provider == "virtualbox":
        return shutil.which("VBoxManage") is not None
    plugins = _run(["vagrant", "plugin", "list", "--machine-readable"], env=env).stdout
    return provider == "libvirt" and ",plugin-name,vagrant-libvirt" in plugins


def validate_definition(directory: str, provider: str, provider_loaded: bool,
                        env: dict | None = None) -> subprocess.CompletedProcess:
    """`vagrant validate` of a generated definition.

    Vagrant refuses to validate for a provider it cannot load: then only the core settings
    are checked (`--ignore-provider`), and the caller reports the provider block unchecked.
    """
    argv = ["vagrant", "validate"] + ([] if provider_loaded else ["--ignore-provider"])
    return subprocess.run(argv, cwd=directory, capture_output=True, text=True,
                          env=vagrant_env(provider, env), timeout=120, check=False)


def check_definition(p: EntryPlan, directory: str, provider_loaded: bool) -> dict[str, Any]:
    """`vagrant validate` and python-vagrant's status() of one generated definition."""
    import vagrant  # python-vagrant, from the harness extra

    checked = validate_definition(directory, p.provider, provider_loaded)
    result: dict[str, Any] = {
        "entry": p.entry, "directory": directory, "provider": p.provider,
        "validate": checked.returncode == 0, "provider_block_checked": provider_loaded,
        "output": (checked.stdout + checked.stderr).strip(), "status": {}, "status_ok": False,
    }
    if not result["validate"]:
        return result
    if not provider_loaded:
        result["status_ok"] = None   # Vagrant reads no machine state through it
        return result
    try:
        machines = vagrant.Vagrant(root=directory, env=vagrant_env(p.provider)).status()
    except subprocess.CalledProcessError as exc:
        result["output"] += f"\nvagrant status failed (exit {exc.returncode})"
        return result
    result["status"] = {m.name: m.state for m in machines}
    result["status_ok"] = (sorted(result["status"]) == sorted(n.name for n in p.nodes)
                           and {m.provider for m in machines} == {p.provider})
    return result


def validate_definitions(plans: Sequence[EntryPlan], out_dir: str, jobs: int = 3
                         ) -> list[dict[str, Any]]:
    """Generate every entry's definition under out_dir and check each (a few at a time:
    each Vagrant run is a second or more of Ruby start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    loadable = {provider: provider_loadable(provider) for provider in {p.provider for p in plans}}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(check_definition, p,
                               write_definition(p, os.path.join(out_dir, p.entry)),
                               loadable[p.provider]) for p in plans]
        return [f.result() for f in futures]


# --- the provider -------------------------------------------------------------------------


@dataclass
class VagrantProvider(Provider):
    """The VMs of one OS entry. Needs vagrant, the provider's backend and the box."""

    entry_plan: EntryPlan
    workdir: str = DEFAULT_WORKDIR
    quiet: bool = False
    _ssh_hosts: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    name = "vagrant"

    @classmethod
    def availability(cls) -> Availability:
        return check_host("libvirt")

    @property
    def directory(self) -> str:
        return os.path.join(self.workdir, f"{self.entry_plan.entry}-{self.entry_plan.provider}")

    @property
    def state_dir(self) -> str:
        """Where deploy keeps its ansible-runner data (cni_harness.deploy.playbook)."""
        return self.directory

    @property
    def ssh_config_path(self) -> str:
        return os.path.join(self.directory, "ssh_config")

    @classmethod
    def from_inventory(cls, path: str, matrix_path: str | None = None) -> VagrantProvider:
        """The provider of VMs that are already up, rebuilt from the inventory `matrix run`
        wrote for them (how a suite in another process finds the entry's VMs). Their ssh
        access comes from the ssh_config next to it, so no Vagrant command runs here."""
        from ..matrix.matrix import DEFAULT_MATRIX, load_matrix

        try:
            doc = _load_yaml(path) or {}
        except OSError as exc:
            raise PlanError(f"vagrant inventory {path}: {exc.strerror}") from None
        group_vars = (doc.get("all") or {}).get("vars") or {}
        entry_name = group_vars.get("cni_os_entry")
        if not entry_name:
            raise PlanError(f"{path} is not a Vagrant inventory of this harness (no "
                            "cni_os_entry)")
        matrix = load_matrix(matrix_path or DEFAULT_MATRIX)
        names = [e.name for e in matrix.os_entries]
        if entry_name not in names:
            raise PlanError(f"{path}: OS entry {entry_name!r} is not in {matrix.path}")
        entry_plan = plan(matrix.os_entries[names.index(entry_name)], names.index(entry_name),
                          provider=group_vars.get("cni_vagrant_provider", "libvirt"))
        directory = os.path.dirname(os.path.abspath(path))
        provider = cls(entry_plan, workdir=os.path.dirname(directory), quiet=True)
        if provider.directory != directory:
            raise PlanError(f"{path}: expected the inventory in {provider.directory}")
        with open(provider.ssh_config_path, encoding="utf-8") as fh:
            provider._ssh_hosts = parse_ssh_config(fh.read())
        return provider

    def check(self) -> Availability:
        return check_host(self.entry_plan.provider, [self.entry_plan.box],
                          self.entry_plan.libvirt_driver)

    def _vagrant(self):
        import vagrant  # python-vagrant, from the harness extra

        write_definition(self.entry_plan, self.directory)
        return vagrant.Vagrant(root=self.directory, env=vagrant_env(self.entry_plan.provider),
                               quiet_stdout=self.quiet, quiet_stderr=self.quiet)

    def up(self) -> None:
        available = self.check()
        if not available.ok:
            raise ProviderUnavailable(available.reason())
        self._vagrant().up(provider=self.entry_plan.provider)
        self._refresh_ssh_config()

    def halt(self) -> None:
        self._vagrant().halt()

    def down(self) -> None:
        if not os.path.isdir(self.directory) or shutil.which("vagrant") is None:
            return
        self._vagrant().destroy()

    def reload(self, node: str | None = None) -> None:
        self._vagrant().reload(vm_name=node)
        self._refresh_ssh_config()

    def _refresh_ssh_config(self) -> None:
        text = self._vagrant().ssh_config()
        with open(self.ssh_config_path, "w", encoding="utf-8") as fh:
            fh.write(text)
        self._ssh_hosts = parse_ssh_config(text)

    def _ssh_argv(self, node: str) -> list[str]:
        if not self._ssh_hosts:
            self._refresh_ssh_config()
        self.node(node)   # KeyError naming the nodes for an unknown one
        return ["ssh", "-F", self.ssh_config_path, "-o", "BatchMode=yes", node]

    def nodes(self) -> list[NodeInfo]:
        return [n.to_info() for n in self.entry_plan.nodes]

    def exec(self, node: str, argv: Sequence[str], *, input: str | bytes | None = None,
             timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess:
        remote = "sudo -n -- " + shlex.join(list(argv))
        return run_text([*self._ssh_argv(node), remote], input, timeout, check)

    def put_file(self, node: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self.exec(node, ["sh", "-c", put_file_script(path, mode)], input=data)

    def reboot(self, node: str) -> None:
        """A real power cycle through Vagrant; returns once ssh answers again."""
        self.node(node)
        self.reload(node)

    @property
    def inventory_file(self) -> str:
        """Where `inventory_path()` writes the inventory (known before the VMs exist)."""
        return os.path.join(self.directory, "inventory.yml")

    def inventory_path(self) -> str:
        if not self._ssh_hosts:
            self._refresh_ssh_config()
        path = self.inventory_file
        text = inventory(self.entry_plan, self.ssh_config_path, self._ssh_hosts)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".inventory.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return path

    def status(self) -> dict:
        states: dict[str, str] = {}
        if shutil.which("vagrant") is not None and os.path.isdir(self.directory):
            states = {s.name: s.state for s in self._vagrant().status()}
        return {
            "provider": self.name,
            "vagrant_provider": self.entry_plan.provider,
            "entry": self.entry_plan.entry,
            "directory": self.directory,
            "nodes": [{**n.to_info().to_dict(), "state": states.get(n.name, "unknown")}
                      for n in self.entry_plan.nodes],
        }
