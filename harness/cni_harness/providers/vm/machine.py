"""One VM node: its identity (pure), its qemu command line (pure), and its qemu process.

A node is `qemu-system-x86_64` booting the image's kernel directly (a guest `reboot`
resets the machine and boots that kernel again: a real reboot, new boot id) from a
copy-on-write overlay of the cached image. qemu runs inside the cluster's fabric network
namespace, so its NIC, a tap on the fabric bridge named like the local provider's veth
port, appears nowhere else: the node network, client and world are exactly the local
provider's. Per-node identity travels as a tar through qemu's fw_cfg (`identity_files`),
applied at every boot by the unit baked into the image: nothing node-specific is baked.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass

from ..local.addressing import NODE_NETWORK, ROUTER_IP, ClusterPlan, NodePlan
from ..local.netns import (
    cmdline,
    find_processes,
    ip_batch,
    kill_and_wait,
    pid_alive,
    start_time,
)
from ..local.node import hosts_file, uplink_mac
from .image import IDENTITY_FW_CFG, ROOT_DEVICE, BakedImage

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
AGENT_UNIT = "cni-cilium-agent.service"      # the install role's unit (playbooks/roles/install)


@dataclass(frozen=True)
class VmResources:
    """What each node VM gets."""

    memory_mib: int = 1536        # bcc's clang compiling the datapath needs ~600 MiB
    cpus: int = 1                 # 3 emulated nodes on a 2-core host: one vCPU each
    kvm: bool = False


# ---------------------------------------------------------------- identity (pure)

def node_env(node: NodePlan) -> str:
    """/etc/cni-harness/node.env: what the identity unit configures the uplink with."""
    prefix = NODE_NETWORK.split("/")[1]
    return (f"NODE_NAME={node.name}\nNODE_IP={node.ip}\nNODE_PREFIX={prefix}\n"
            f"ROUTER_IP={ROUTER_IP}\nUPLINK_MAC={uplink_mac(node.ip)}\n")


def identity_files(plan: ClusterPlan, node: NodePlan, authorized_key: str,
                   host_key: tuple[str, str]) -> dict[str, tuple[str, int]]:
    """{path: (text, mode)} the node gets at every boot; `host_key` is (private, public).
    (The agent's time scale comes with the install role's unit, from the inventory's
    `cni_time_scale`.)"""
    private, public = host_key
    return {
        "/etc/hostname": (node.name + "\n", 0o644),
        "/etc/hosts": (hosts_file(plan), 0o644),
        "/etc/cni-harness/node.env": (node_env(node), 0o644),
        "/etc/ssh/ssh_host_ed25519_key": (private.rstrip("\n") + "\n", 0o600),
        "/etc/ssh/ssh_host_ed25519_key.pub": (public.strip() + "\n", 0o644),
        "/root/.ssh/authorized_keys": (authorized_key.strip() + "\n", 0o600),
    }


def identity_tar(files: dict[str, tuple[str, int]]) -> bytes:
    """The files as a tar (root-owned, fixed times: the same identity, the same bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p.lstrip("/")) for p in files})
        for directory in dirs:
            parts = directory.split("/")
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name in tar.getnames():
                    continue
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                # /root/.ssh must not be group/world readable (sshd's StrictModes).
                info.mode = 0o700 if name.endswith(".ssh") else 0o755
                tar.addfile(info)
        for path, (text, mode) in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------- qemu (pure)

KERNEL_ARGS = (f"root={ROOT_DEVICE}", "rw", "console=ttyS0,115200n8", "net.ifnames=0",
               # Emulated CPUs pay dearly for speculation mitigations and gain nothing.
               "mitigations=off",
               # The jitter entropy source's start-up self test times memory accesses in a
               # loop: ~90 s of an emulated (TCG) CPU at every boot, for an RNG the VM does
               # not need (virtio-rng and the kernel's own pool seed it).
               "initcall_blacklist=jent_mod_init",
               # The crypto API's self tests of every algorithm at registration: tens of
               # seconds more of emulated CPU per boot, testing the emulator.
               "cryptomgr.notests=1",
               # Drivers for q35 chipset parts and nested virtualization a node never uses
               # (watchdog, LPC, SMBus, speaker, KVM): each is emulated work at every boot.
               "module_blacklist=iTCO_wdt,iTCO_vendor_support,lpc_ich,i2c_i801,pcspkr,"
               "kvm,kvm_amd,kvm_intel,joydev,serio_raw")


def _in_dir(name: str) -> property:
    return property(lambda self: os.path.join(self.directory, name))


@dataclass(frozen=True)
class VmFiles:
    """Where one node's files are on the host."""

    directory: str
    overlay = _in_dir("disk.qcow2")          # copy-on-write over the cached image
    identity = _in_dir("identity.tar")       # given to the guest through fw_cfg
    console = _in_dir("console.log")         # the serial console
    pidfile = _in_dir("qemu.pid")
    host_key = _in_dir("ssh_host_ed25519_key")


def vm_name(cluster: str, node: str) -> str:
    """The qemu -name of a node (also how `down` recognises its processes)."""
    return f"cni-{cluster}-{node}"


def name_option(name: str) -> str:
    """qemu's `-name` value for a VM: its name, also as the process name (`ps` shows it)."""
    return f"{name},process={name}"


def qemu_argv(name: str, image: BakedImage, files: VmFiles, tap: str, mac: str,
              res: VmResources) -> list[str]:
    """The command line of a node's VM (daemonized, pid in `files.pidfile`)."""
    accel = ["-accel", "kvm", "-cpu", "host"] if res.kvm else ["-accel", "tcg", "-cpu", "max"]
    return [
        QEMU, "-name", name_option(name), "-machine", "q35", *accel,
        "-m", str(res.memory_mib), "-smp", str(res.cpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", image.kernel, "-initrd", image.initrd, "-append", " ".join(KERNEL_ARGS),
        # cache=unsafe: the overlay is scratch (gone at `down`); guest flushes (dpkg, apt)
        # would otherwise cost emulated seconds each.
        "-drive", f"file={files.overlay},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", f"tap,id=uplink,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=uplink,mac={mac}",
        "-device", "virtio-rng-pci",
        "-fw_cfg", f"name={IDENTITY_FW_CFG},file={files.identity}",
        "-chardev", f"file,id=console,path={files.console},append=on",
        "-serial", "chardev:console",
        "-pidfile", files.pidfile, "-daemonize",
    ]


def overlay_argv(image: BakedImage, overlay: str) -> list[str]:
    """qemu-img creating a node's copy-on-write disk over the cached image."""
    return [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", image.root, "-F", "raw", overlay]


def tap_commands(tap: str) -> list[str]:
    """iproute2 batch (run in the fabric namespace): a node's tap on the bridge."""
    return [f"tuntap add dev {tap} mode tap", f"link set {tap} master br0",
            f"link set {tap} up"]


# ---------------------------------------------------------------- the process (edge)

class VmError(RuntimeError):
    """A node VM could not be started or stopped; the message says why."""


def create_tap(fabric_netns: str, tap: str) -> None:
    ip_batch(fabric_netns, tap_commands(tap))


def launch(fabric_netns: str, argv: list[str], files: VmFiles) -> int:
    """Start qemu (daemonized) in the fabric namespace; returns its pid."""
    if os.path.exists(files.pidfile):
        os.unlink(files.pidfile)
    res = subprocess.run(["nsenter", f"--net=/run/netns/{fabric_netns}", "--", *argv],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=120, check=False)
    if res.returncode != 0:
        raise VmError(f"qemu did not start (exit {res.returncode}): "
                      f"{(res.stderr or res.stdout).strip()[-600:]}")
    pid = qemu_pid(files, argv_name(argv))
    if pid is None:
        raise VmError(f"qemu started but {files.pidfile} names no running qemu")
    return pid


def argv_name(argv: list[str]) -> str:
    return argv[argv.index("-name") + 1].split(",")[0]


def qemu_pid(files: VmFiles, name: str) -> int | None:
    """The pid in the node's pidfile, if that process is our node's qemu (same -name and
    pidfile on its command line: a recycled pid is never taken for it)."""
    try:
        with open(files.pidfile, encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    args = cmdline(pid)
    if not args or files.pidfile not in args or not any(a.startswith(name + ",")
                                                        for a in args):
        return None
    return pid if pid_alive(pid) and start_time(pid) is not None else None


def vm_processes(name: str) -> list[int]:
    """Every running qemu started with this VM's name, wherever its pidfile is or was."""
    return find_processes("-name", name_option(name))


def kill_vm(files: VmFiles, name: str, graceful_seconds: float = 0.0) -> bool:
    """Stop a node's qemu by its pid: SIGTERM (qemu quits, like pulling the plug), SIGKILL
    after `graceful_seconds`. Returns whether one was running."""
    pid = qemu_pid(files, name)
    if pid is None:
        return False
    if graceful_seconds and kill_and_wait([pid], signal.SIGTERM, graceful_seconds):
        return True
    kill_and_wait([pid], signal.SIGKILL)
    return True


def wait_exit(files: VmFiles, name: str, timeout: float) -> bool:
    """Wait until the node's qemu has exited (a guest poweroff); whether it did."""
    deadline = time.monotonic() + timeout
    while qemu_pid(files, name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
