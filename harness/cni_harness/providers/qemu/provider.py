"""The qemu provider: the local cluster inside a guest booted with another kernel.

virtme-ng (`vng`) boots a kernel image over this host's root filesystem (read-only, with
writable overlays on /etc /var /tmp ... and tmpfs on /run), so the guest runs this very
checkout and virtualenv. A job directory on the host is shared read-write (`--rwdir`):
the guest reads its job spec there and writes everything it produces there (progress log,
facts, JUnit, reports, captures, its exit status), which is how results come back.

Host tools it needs, prepared per boot in a private directory put first on PATH:
- `busybox-static`: virtme-ng's initramfs needs a statically linked busybox;
- `virtiofsd`: virtme-ng speaks the Rust daemon's options; Debian 12 has qemu's C daemon,
  so `virtiofsd_shim` translates (9p, the slow fallback, is missing from cloud kernels).
KVM is used only when a probe shows guests really run under it (a BIOS boot no slower than
emulated); otherwise TCG.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..base import Availability
from .virtiofsd_shim import C_DAEMON

QEMU = "qemu-system-x86_64"
BUSYBOX_CANDIDATES = ("busybox-static", "busybox.static", "busybox")
DEFAULT_MEMORY = "2G"
DEFAULT_CPUS = 2
DEFAULT_TIMEOUT = 3600.0
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RC_FILE = "rc"
JOB_LOG = "job.log"
CONSOLE_LOG = "console.log"


def _venv_bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:   # ELF64 only
                return False
            endian = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    PT_INTERP = 3
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != PT_INTERP
               for i in range(phnum))


def find_static_busybox() -> str | None:
    for name in BUSYBOX_CANDIDATES:
        path = shutil.which(name)
        if path and is_static_elf(os.path.realpath(path)):
            return os.path.realpath(path)
    return None


def find_virtiofsd() -> str | None:
    """The daemon virtme-ng will drive: the C one through the shim (Debian 12)."""
    return C_DAEMON if os.access(C_DAEMON, os.X_OK) else None


def availability() -> Availability:
    """What this host lacks to boot guests (no side effects beyond `which`)."""
    missing = []
    if not shutil.which(QEMU):
        missing.append(f"{QEMU} (apt-get install qemu-system-x86)")
    if not os.access(_venv_bin("vng"), os.X_OK):
        missing.append("virtme-ng in the virtualenv (scripts/setup.sh installs it)")
    if find_static_busybox() is None:
        missing.append("a statically linked busybox (apt-get install busybox-static)")
    if find_virtiofsd() is None:
        missing.append(f"{C_DAEMON} (apt-get install qemu-system-common)")
    if not os.path.exists(f"/lib/modules/{os.uname().release}/build/Makefile"):
        missing.append(f"kernel headers at /lib/modules/{os.uname().release}/build "
                       "(scripts/setup.sh links them)")
    return Availability(not missing, tuple(missing))


_KVM_RESULT: dict[str, tuple[bool, str]] = {}


KVM_PROBE_SECONDS = 20.0
# SeaBIOS's last words when it has run its whole POST and found nothing to boot.
BIOS_DONE = "No bootable device"


def kvm_usable() -> tuple[bool, str]:
    """Whether qemu can really run a guest under KVM here, and why not.

    /dev/kvm may open, and a machine be created, while guests still cannot run usefully
    under it (nested setups: on these machines SeaBIOS's POST takes 12-25 s under KVM, 0.6 s
    emulated, and a kernel prints nothing in a minute). So run one: SeaBIOS, emulated (TCG)
    and then under `-accel kvm -cpu host`, its debug port read until it reports it found
    nothing to boot. KVM is usable when it gets there no later than emulation did.
    """
    if "kvm" in _KVM_RESULT:
        return _KVM_RESULT["kvm"]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        result = (False, "/dev/kvm is not accessible")
    else:
        emulated, why = _bios_seconds(["-accel", "tcg"], KVM_PROBE_SECONDS)
        if emulated is None:
            result = (False, f"qemu KVM probe failed: the emulated BIOS did not finish: {why}")
        else:
            limit = max(emulated, 1.0)
            kvm, why = _bios_seconds(["-accel", "kvm", "-cpu", "host"], limit)
            result = (True, f"KVM works (BIOS in {kvm:.2f} s, emulated {emulated:.2f} s)") \
                if kvm is not None else \
                (False, f"qemu cannot run guests usefully under KVM: {why}, where emulation "
                        f"(TCG) took {emulated:.2f} s")
    _KVM_RESULT["kvm"] = result
    return result


def _bios_seconds(accel: list[str], limit: float) -> tuple[float | None, str]:
    """Seconds SeaBIOS takes to finish its POST with these accelerator options, or None
    and why when it does not within `limit`."""
    with tempfile.TemporaryDirectory(prefix="cni-kvm-probe-") as tmp:
        log = os.path.join(tmp, "bios.log")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [QEMU, *accel, "-machine", "q35", "-m", "64", "-display", "none",
                 "-nodefaults", "-no-reboot", "-chardev", f"file,id=bios,path={log}",
                 "-device", "isa-debugcon,iobase=0x402,chardev=bios"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True)
        except OSError as exc:
            return None, str(exc)
        text = ""
        try:
            while time.monotonic() - started < limit and proc.poll() is None:
                with contextlib.suppress(OSError), open(log, errors="replace") as fh:
                    text = fh.read()
                if BIOS_DONE in text:
                    return time.monotonic() - started, ""
                time.sleep(0.05)
        finally:
            proc.kill()
            _out, err = proc.communicate()
        errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
        if errors:
            return None, errors[0].strip()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return None, (f"the BIOS had not finished after {limit:.2f} s"
                      + (f" (last output: {lines[-1]!r})" if lines else ""))


SHELL_SCRIPT = "guest-shell.sh"


@dataclass(frozen=True)
class GuestSpec:
    """One boot: which kernel, what to run, which host directories the guest may write.

    `interactive`: the command runs as the guest's login shell on the console (the user's
    terminal), then an interactive bash stays until the user exits it. (virtme-ng's
    `--exec` cannot be interactive here: without udev in the guest its script I/O falls
    back to an output-only console.)
    """

    image: str
    command: str                  # shell command run in the guest
    job_dir: str                  # shared read-write; the guest writes results here
    memory: str = DEFAULT_MEMORY
    cpus: int = DEFAULT_CPUS
    kvm: bool = False
    rwdirs: tuple[str, ...] = ()
    interactive: bool = False
    name: str = "cni-harness"


def vng_argv(spec: GuestSpec, vng: str) -> list[str]:
    """The virtme-ng command line for a boot (pure)."""
    argv = [vng, "--run", spec.image, "--memory", spec.memory, "--cpus", str(spec.cpus),
            "--name", spec.name, "--rwdir", spec.job_dir]
    for extra in spec.rwdirs:
        argv += ["--rwdir", extra]
    if not spec.kvm:
        argv.append("--disable-kvm")
    if spec.interactive:
        argv += ["--shell", os.path.join(spec.job_dir, SHELL_SCRIPT)]
    else:
        # --verbose sends the kernel console to vng's output, kept as console.log
        argv += ["--verbose", "--exec", spec.command]
    return argv


def guest_command(argv: Sequence[str], env: dict[str, str]) -> str:
    """A shell command line: the environment, then the job."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    job = " ".join(shlex.quote(a) for a in argv)
    return f"export {exports}; cd /; {job}"


def shell_script(command: str) -> str:
    """The interactive guest's login shell: the job, then bash until the user exits."""
    return ("#!/bin/bash\n"
            f"{command}\n"
            "echo \"cni-harness: job finished (exit $?); results are in $(dirname \"$0\"); "
            "exit this shell to power the guest off\"\n"
            "exec /bin/bash -i\n")


def prepare_tool_dir(path: str, busybox: str) -> None:
    """`busybox-static` and the `virtiofsd` shim, for the front of vng's PATH."""
    os.makedirs(path, exist_ok=True)
    link = os.path.join(path, "busybox-static")
    if not os.path.lexists(link):
        os.symlink(busybox, link)
    shim = os.path.join(path, "virtiofsd")
    with open(shim, "w", encoding="utf-8") as fh:
        fh.write(f"#!{sys.executable}\n"
                 "from cni_harness.providers.qemu.virtiofsd_shim import main\n"
                 "raise SystemExit(main())\n")
    os.chmod(shim, 0o755)


@dataclass
class BootResult:
    """What came back from one boot."""

    guest_rc: int | None          # the job's exit status written by the guest, None if absent
    vng_rc: int
    seconds: float
    timed_out: bool = False
    console_tail: list[str] = field(default_factory=list)


def _follow(path: str, stop: threading.Event, emit: Callable[[str], None]) -> None:
    """Emit lines appended to a file until `stop` is set (the guest's progress log)."""
    pos = 0
    partial = ""
    while True:
        done = stop.is_set()
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
        except OSError:
            chunk = ""
        if chunk:
            partial += chunk
            *lines, partial = partial.split("\n")
            for line in lines:
                emit(line)
        if done:
            if partial:
                emit(partial)
            return
        stop.wait(0.5)


def boot(spec: GuestSpec, *, timeout: float = DEFAULT_TIMEOUT,
         progress: Callable[[str], None] = lambda _m: None) -> BootResult:
    """Boot the guest, stream its job log as progress, wait for it, collect the status.

    vng's output goes through a pipe (it misbehaves writing straight to a file) into
    `console.log` in the job directory. An overdue guest is killed with its whole process
    group (vng, qemu, virtiofsd).
    """
    busybox = find_static_busybox()
    if busybox is None:
        raise RuntimeError("no statically linked busybox (apt-get install busybox-static)")
    os.makedirs(spec.job_dir, exist_ok=True)
    tools = tempfile.mkdtemp(prefix="cni-harness-vng-")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([tools, os.path.dirname(sys.executable),
                                   env.get("PATH", GUEST_PATH)])
    argv = vng_argv(spec, _venv_bin("vng"))
    started = time.monotonic()
    timed_out = False
    tail: list[str] = []
    try:
        prepare_tool_dir(tools, busybox)
        if spec.interactive:
            script = os.path.join(spec.job_dir, SHELL_SCRIPT)
            with open(script, "w", encoding="utf-8") as fh:
                fh.write(shell_script(spec.command))
            os.chmod(script, 0o755)
            proc = subprocess.Popen(argv, env=env, cwd=spec.job_dir)
            vng_rc = proc.wait()
        else:
            stop = threading.Event()
            follower = threading.Thread(
                target=_follow, args=(os.path.join(spec.job_dir, JOB_LOG), stop, progress),
                daemon=True)
            follower.start()
            with open(os.path.join(spec.job_dir, CONSOLE_LOG), "w", encoding="utf-8") as log:
                proc = subprocess.Popen(argv, env=env, cwd=spec.job_dir,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                expired = threading.Event()

                def on_timeout(proc: subprocess.Popen = proc) -> None:
                    expired.set()
                    _kill_group(proc)

                killer = threading.Timer(timeout, on_timeout)
                killer.start()
                try:
                    assert proc.stdout is not None
                    for raw in proc.stdout:
                        line = raw.decode("utf-8", "replace")
                        log.write(line)
                        tail = [*tail, line.rstrip()][-40:]
                    vng_rc = proc.wait()
                finally:
                    killer.cancel()
                    timed_out = expired.is_set()
                    # Whatever of the guest's group is left (a virtiofsd whose qemu died).
                    _kill_group(proc)
                    proc.wait()
            stop.set()
            follower.join()
    finally:
        shutil.rmtree(tools, ignore_errors=True)
    return BootResult(_read_rc(spec.job_dir), vng_rc, time.monotonic() - started, timed_out,
                      tail)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _read_rc(job_dir: str) -> int | None:
    try:
        with open(os.path.join(job_dir, RC_FILE), encoding="utf-8") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None
