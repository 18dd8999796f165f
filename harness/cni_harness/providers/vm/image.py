"""The VM provider's disk image: a Debian root file system baked once per (suite, packages,
bake version) with mmdebstrap from the mirror this host's apt already uses.

Like a Vagrant box, the image holds every package the playbooks install (the install
role's list for the Debian family, read from the role) plus the kernel, its headers (bcc
compiles against them) and the tools the suites run on nodes, so the playbooks' apt step
is a real apt run that finds everything present: the VMs have no route to any mirror.

Nothing in the image is node-specific: hostname, address, ssh keys arrive per boot through
qemu's fw_cfg (`machine.identity_files`), read by the `cni-harness-identity` unit baked here.

Layout of a cache entry (`<cache>/<key>/`): `root.img` (raw ext4, the base of every node's
copy-on-write overlay), `vmlinuz`, `initrd.img` (direct kernel boot), `image.json`.
Pure: `suite_for`, `image_packages`, `ImageSpec.key`, `baked_files`, `mmdebstrap_argv`.
Edge: `ensure_image` (mmdebstrap, mkfs.ext4).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from ...matrix.kernels import (
    AptSource,
    debian_mirror,
    file_lock,
    host_codename,
    read_apt_sources,
)
from ...matrix.matrix import OsEntry
from ..vagrant import install_packages

DEFAULT_CACHE = "/var/cache/cni-harness/vm-images"
CACHE_ENV = "CNI_HARNESS_VM_IMAGE_CACHE"
# Bump when anything below changes what a baked image contains (files, hooks, size).
BAKE_VERSION = 2
IMAGE_SIZE = "6G"          # sparse; nodes write into their own overlays
ROOT_DEVICE = "/dev/vda"
IDENTITY_FW_CFG = "opt/cni-harness/identity"
IDENTITY_UNIT = "cni-harness-identity.service"
IDENTITY_SCRIPT = "/usr/local/sbin/cni-harness-identity"
BOOTS_FILE = "/var/lib/cni-harness/boots"      # one boot id per line, appended at each boot

# What a node needs beyond the install role: a real init, sshd, the kernel and its
# headers (bcc), python-apt (Ansible's apt module) and the tools suites run on nodes.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "udev", "openssh-server", "python3", "python3-apt",
    "linux-image-amd64", "linux-headers-amd64", "initramfs-tools", "iproute2", "kmod",
    "procps", "psmisc", "util-linux", "iputils-ping", "curl", "tcpdump", "iptables",
    "nftables", "netcat-openbsd", "socat", "iperf3",
)
# Timers that would wake an offline VM for nothing (apt downloads, man-db, trims).
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
                "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service")
# dpkg leaves these out of the image: nobody reads them on a test node.
EXCLUDED_PATHS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                  "/usr/share/locale/*")


class ImageError(RuntimeError):
    """The image cannot be baked or used; the message says which step and why."""


def cache_root() -> str:
    """Where baked images live (env CNI_HARNESS_VM_IMAGE_CACHE overrides)."""
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE


def suite_for(entry: OsEntry) -> str:
    """The Debian suite of a matrix OS entry: VERSION_CODENAME, else the codename in
    PRETTY_NAME ("Debian GNU/Linux 12 (bookworm)")."""
    release = entry.os_release
    if release.get("ID", "").lower() != "debian":
        raise ImageError(f"{entry.name}: the vm provider bakes Debian images only "
                         f"(os_release ID={release.get('ID')!r})")
    codename = release.get("VERSION_CODENAME", "")
    if not codename:
        match = re.search(r"\(([a-z]+)\)\s*$", release.get("PRETTY_NAME", ""))
        codename = match.group(1) if match else ""
    if not codename:
        raise ImageError(f"{entry.name}: no codename in os_release (VERSION_CODENAME or "
                         "PRETTY_NAME '... (codename)')")
    return codename


def image_packages(role_packages: Sequence[str]) -> tuple[str, ...]:
    """BASE_PACKAGES and the install role's, each once, sorted (the key must not depend
    on the order someone lists them in)."""
    return tuple(sorted(set(BASE_PACKAGES) | set(role_packages)))


@dataclass(frozen=True)
class ImageSpec:
    """What one image is baked from."""

    suite: str
    packages: tuple[str, ...]
    bake_version: int = BAKE_VERSION

    def key(self) -> str:
        """The cache key: a hash of suite, package list and bake version."""
        doc = json.dumps({"suite": self.suite, "packages": sorted(self.packages),
                          "bake": self.bake_version}, sort_keys=True)
        return f"{self.suite}-{hashlib.sha256(doc.encode()).hexdigest()[:16]}"


def spec_for(entry: OsEntry) -> ImageSpec:
    """The image spec of a matrix OS entry (packages: ours + the install role's)."""
    return ImageSpec(suite_for(entry), image_packages(install_packages("Debian")))


@dataclass(frozen=True)
class BakedImage:
    """A baked image ready to boot."""

    key: str
    suite: str
    root: str              # raw ext4 image, base of the nodes' overlays
    kernel: str
    initrd: str
    kernel_release: str
    packages: tuple[str, ...]
    mirror: str
    baked_at: float
    bake_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- what the image holds

IDENTITY_SCRIPT_TEXT = f"""\
#!/bin/sh
# cni-harness: give this VM its identity at every boot (written by the image bake).
# The harness passes a tar through qemu's fw_cfg ({IDENTITY_FW_CFG}): hostname, hosts,
# ssh host key, root's authorized key, node.env (address, router, uplink MAC), drop-ins.
set -eu
modprobe qemu_fw_cfg 2>/dev/null || true
src=/sys/firmware/qemu_fw_cfg/by_name/{IDENTITY_FW_CFG}/raw
for i in $(seq 100); do [ -r "$src" ] && break; sleep 0.1; done
cat "$src" > /run/cni-harness-identity.tar
tar -x -f /run/cni-harness-identity.tar -C / --no-same-owner --no-overwrite-dir
. /etc/cni-harness/node.env
hostname "$NODE_NAME"
# The uplink is the NIC with the MAC the harness gave it (names may differ per kernel).
uplink=eth0
for dev in /sys/class/net/*; do
  if [ "$(cat "$dev/address")" = "$UPLINK_MAC" ]; then uplink=${{dev##*/}}; fi
done
ip link set lo up
ip link set "$uplink" up
ip addr replace "$NODE_IP/$NODE_PREFIX" dev "$uplink"
ip route replace default via "$ROUTER_IP" dev "$uplink"
mkdir -p "$(dirname {BOOTS_FILE})"
cat /proc/sys/kernel/random/boot_id >> {BOOTS_FILE}
echo "cni-harness: $NODE_NAME $NODE_IP/$NODE_PREFIX on $uplink," \
  "boot $(cat /proc/sys/kernel/random/boot_id)" > /dev/console
"""

IDENTITY_UNIT_TEXT = f"""\
[Unit]
Description=cni-harness node identity (hostname, address, ssh keys) from qemu fw_cfg
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=network-pre.target ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={IDENTITY_SCRIPT}

[Install]
WantedBy=multi-user.target
"""

NODECTL_SHIM = """\
#!/bin/sh
# nodectl on a VM node (written by the image bake): the local provider's unit control,
# which systemd does here. Suites written for namespace nodes stop and start the agent
# with it; their verbs (start, stop, restart, status, is-active, enable, disable) are
# systemctl's.
[ "$1" = "--json" ] && shift
exec systemctl "$@"
"""
NODECTL = "/usr/local/sbin/nodectl"

SSHD_DROPIN = """\
# cni-harness VM node: the host key comes with the node's identity; root by key only.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
MaxSessions 64
"""


def baked_files() -> dict[str, tuple[str, int]]:
    """Files written into the image after mmdebstrap: {path: (text, mode)}."""
    return {
        "/etc/fstab": (f"{ROOT_DEVICE} / ext4 rw,relatime,errors=remount-ro 0 1\n", 0o644),
        IDENTITY_SCRIPT: (IDENTITY_SCRIPT_TEXT, 0o755),
        f"/etc/systemd/system/{IDENTITY_UNIT}": (IDENTITY_UNIT_TEXT, 0o644),
        "/etc/ssh/sshd_config.d/cni-harness.conf": (SSHD_DROPIN, 0o644),
        # No DNS server on the testbed: a refused local resolver answers at once instead of
        # making every lookup (Ansible fact gathering) wait for a timeout.
        "/etc/resolv.conf": ("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n", 0o644),
        # As on the local provider's nodes: no IPv6 chatter in the captures.
        "/etc/sysctl.d/60-cni-harness.conf": ("net.ipv6.conf.all.disable_ipv6 = 1\n"
                                              "net.ipv6.conf.default.disable_ipv6 = 1\n", 0o644),
        "/etc/hostname": ("cni-vm\n", 0o644),
        NODECTL: (NODECTL_SHIM, 0o755),
    }


def mmdebstrap_argv(spec: ImageSpec, mirror: AptSource, target: str) -> list[str]:
    """The mmdebstrap command baking `spec` into the directory `target` (pure)."""
    signed = f" [signed-by={mirror.signed_by}]" if mirror.signed_by else ""
    argv = ["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
            "--components=main", "--include=" + ",".join(spec.packages),
            "--aptopt=Acquire::Languages \"none\"",
            "--aptopt=APT::Install-Recommends \"false\""]
    argv += [f"--dpkgopt=path-exclude={path}" for path in EXCLUDED_PATHS]
    return [*argv, spec.suite, target, f"deb{signed} {mirror.uris[0]} {spec.suite} main"]


# ---------------------------------------------------------------- baking (edge)

def load_image(directory: str) -> BakedImage | None:
    """The baked image in a cache entry, if complete."""
    try:
        with open(os.path.join(directory, "image.json"), encoding="utf-8") as fh:
            doc = json.load(fh)
        image = BakedImage(**{**doc, "packages": tuple(doc["packages"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not all(os.path.isfile(p) for p in (image.root, image.kernel, image.initrd)):
        return None
    return image


def _run(argv: Sequence[str], log: str, timeout: float) -> None:
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        res = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                             timeout=timeout, check=False)
    if res.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()[-1500:]
        raise ImageError(f"{argv[0]} failed (exit {res.returncode}); log {log}:\n{tail}")


def ensure_mmdebstrap(progress: Callable[[str], None]) -> None:
    """Install mmdebstrap from the configured apt sources when it is missing."""
    if shutil.which("mmdebstrap"):
        return
    progress("installing mmdebstrap (apt-get install mmdebstrap)")
    res = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                          "mmdebstrap"], capture_output=True, text=True, check=False,
                         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if res.returncode != 0 or not shutil.which("mmdebstrap"):
        raise ImageError(f"apt-get install mmdebstrap failed: {res.stderr.strip()[-500:]}")


def _write_into(rootfs: str, files: dict[str, tuple[str, int]]) -> None:
    for path, (text, mode) in files.items():
        dest = os.path.join(rootfs, path.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.islink(dest):          # e.g. a resolv.conf link: replace, never follow
            os.unlink(dest)
        with open(dest, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(dest, mode)


def _customize(rootfs: str, log: str) -> None:
    """Our files, units enabled/masked, no shared host keys, an empty machine-id (each
    node's first boot makes its own, in its overlay)."""
    _write_into(rootfs, baked_files())
    _run(["systemctl", f"--root={rootfs}", "enable", IDENTITY_UNIT, "ssh.service"], log, 60)
    _run(["systemctl", f"--root={rootfs}", "mask", *MASKED_UNITS], log, 60)
    for key in glob.glob(os.path.join(rootfs, "etc", "ssh", "ssh_host_*")):
        os.unlink(key)
    with open(os.path.join(rootfs, "etc", "machine-id"), "w", encoding="ascii"):
        pass
    # root logs in by key only; its .ssh comes with the identity.
    _run(["chroot", rootfs, "passwd", "-l", "root"], log, 60)


def _kernel_files(rootfs: str) -> tuple[str, str, str]:
    """(vmlinuz, initrd, release) of the newest kernel installed in the root fs."""
    images = sorted(glob.glob(os.path.join(rootfs, "boot", "vmlinuz-*")))
    if not images:
        raise ImageError(f"{rootfs}: no /boot/vmlinuz-* (linux-image-amd64 not installed?)")
    release = os.path.basename(images[-1])[len("vmlinuz-"):]
    initrd = os.path.join(rootfs, "boot", f"initrd.img-{release}")
    if not os.path.isfile(initrd):
        raise ImageError(f"{rootfs}: no /boot/initrd.img-{release}")
    return images[-1], initrd, release


def ensure_image(spec: ImageSpec, cache: str | None = None,
                 progress: Callable[[str], None] = lambda _m: None) -> BakedImage:
    """The image of `spec` from the cache, baked first when absent (one baker at a time:
    a second `up` waits for the first bake and then uses it)."""
    cache = cache or cache_root()
    key = spec.key()
    final = os.path.join(cache, key)
    image = load_image(final)
    if image is not None:
        return image
    with file_lock(os.path.join(cache, f".{key}.lock")):
        image = load_image(final)
        if image is not None:
            return image
        return _bake(spec, final, progress)


def _bake(spec: ImageSpec, final: str, progress: Callable[[str], None]) -> BakedImage:
    started = time.monotonic()
    ensure_mmdebstrap(progress)
    mirror = debian_mirror(read_apt_sources(), host_codename())
    work = final + ".work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    os.makedirs(work)
    log = os.path.join(work, "bake.log")
    rootfs = os.path.join(work, "rootfs")
    progress(f"baking the {spec.suite} image {spec.key()} from {mirror.uris[0]} "
             f"({len(spec.packages)} packages; a few minutes, once)")
    try:
        _run(mmdebstrap_argv(spec, mirror, rootfs), log, 3600)
        _customize(rootfs, log)
        kernel, initrd, release = _kernel_files(rootfs)
        shutil.copyfile(kernel, os.path.join(work, "vmlinuz"))
        shutil.copyfile(initrd, os.path.join(work, "initrd.img"))
        progress(f"image {spec.key()}: kernel {release}; writing the ext4 file system")
        _run(["mkfs.ext4", "-q", "-F", "-L", "cniroot", "-d", rootfs,
              os.path.join(work, "root.img"), IMAGE_SIZE], log, 1800)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    image = BakedImage(key=spec.key(), suite=spec.suite, root=os.path.join(final, "root.img"),
                       kernel=os.path.join(final, "vmlinuz"),
                       initrd=os.path.join(final, "initrd.img"), kernel_release=release,
                       packages=spec.packages, mirror=mirror.uris[0], baked_at=time.time(),
                       bake_seconds=round(time.monotonic() - started, 1))
    with open(os.path.join(work, "image.json"), "w", encoding="utf-8") as fh:
        json.dump(image.to_dict(), fh, indent=2)
    os.rename(work, final)
    progress(f"image {spec.key()} baked in {image.bake_seconds:.0f} s: {final}")
    return image
