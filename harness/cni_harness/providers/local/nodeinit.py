"""`nodeinit`: PID 1 of a namespace node, and `nodectl`, its control command.

A local-provider node runs in its own network, mount, UTS, IPC and PID namespaces. This
init gives it what a booted machine has: the node's "disk" as overlays on /etc /var /usr
/opt /srv /root /home, a private /run and /tmp, a fresh /proc and /sys, its own bpffs
instance, its hostname and its own boot id (bind-mounted over
/proc/sys/kernel/random/boot_id so tools that read it, Ansible's reboot module included,
see a reboot). Then it runs the boot sequence: sshd first (waiting until it listens), then
every enabled unit in name order, and supervises them (Restart=). Killing this process
kills the whole PID namespace, so nothing of the node survives a reboot.

Units are a subset of systemd unit files (`cni_harness.providers.local.units`) kept in
/etc/nodeinit/units/, enabled by a link in /etc/nodeinit/enabled/. `nodectl` talks to
the init over a unix socket: start, stop, restart, enable, disable, status, reboot, poweroff.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import socket
import sys
import time
import uuid
from collections import deque

from ... import PROJECT_ROOT
from .units import Unit, UnitError, parse_unit

UNIT_DIR = "/etc/nodeinit/units"
ENABLED_DIR = "/etc/nodeinit/enabled"
RUN_DIR = "/run/nodeinit"
CONTROL_SOCKET = os.path.join(RUN_DIR, "control.sock")
STATUS_FILE = os.path.join(RUN_DIR, "status.json")
BOOT_ID_FILE = os.path.join(RUN_DIR, "boot_id")
LOG_DIR = "/var/log/nodeinit"
KERNEL_BOOT_ID = "/proc/sys/kernel/random/boot_id"
OVERLAY_DIRS = ("/etc", "/var", "/usr", "/opt", "/srv", "/root", "/home")
EARLY_UNITS = ("sshd.service",)     # the boot sequence starts these first, in this order
SSH_PORT = 22
REBOOT_EXIT = 100                   # exit status asking the supervisor to rebuild the node
START_LIMIT = (5, 10.0)             # at most 5 starts in 10 s, then the unit is "failed"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
MS_REMOUNT, MS_BIND = 32, 4096
MNT_DETACH = 2


# ---------------------------------------------------------------- mounts (edge: libc)

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                   ctypes.c_ulong(flags), data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} {source} on {target}: "
                      f"{os.strerror(err)}")


def _umount_lazy(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, file system type) of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            point = fields[4].encode().decode("unicode_escape")  # octal escapes (\040)
            out.append((point, fstype))
    return out


def detach_inherited_mounts(replaced: tuple[str, ...]) -> None:
    """Drop mounts copied from the host that the node must not hold: everything below the
    directories it replaces, and every namespace handle (nsfs) - a copy would keep other
    namespaces (the host's `ip netns` ones) alive for as long as this node lives."""
    def doomed(point: str, fstype: str) -> bool:
        return fstype == "nsfs" or any(point.startswith(r + "/") for r in replaced)
    for point, fstype in sorted(_mount_points(), key=lambda m: m[0].count("/")):
        if doomed(point, fstype):
            _umount_lazy(point)


def overlay_order(dirs: tuple[str, ...], disk: str) -> list[str]:
    """Mount order: a directory holding the disk itself goes last, so the disk paths of the
    other overlays are still the host's when they are mounted."""
    def holds_disk(d: str) -> bool:
        return disk == d or disk.startswith(d.rstrip("/") + "/")
    return sorted(dirs, key=holds_disk)


PRIVATE_DIRS = ("/run", "/tmp")


def carried_paths(paths: tuple[str, ...], private: tuple[str, ...] = PRIVATE_DIRS) -> list[str]:
    """Those of `paths` that sit below a directory the node replaces with its own tmpfs: a
    checkout in /tmp (as CI clones may be) must stay visible to the node that runs it."""
    inside = sorted({os.path.realpath(p) for p in paths
                     if any(os.path.realpath(p).startswith(d + "/") for d in private)})
    return [p for p in inside if not any(p.startswith(q + "/") for q in inside)]


def _carry_into_private_dirs(paths: list[str], mount_private) -> None:
    """Mount the private dirs with `mount_private()`, then bind each carried path (opened
    beforehand, since the tmpfs hides it) read-only at the same place."""
    handles = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in paths]
    mount_private()
    for path, handle in handles:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{handle}", path, "", MS_BIND)
        _mount("none", path, "", MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(handle)


def mount_node_filesystems(disk: str, boot_id: str) -> None:
    """Build the node's file system view inside its fresh mount namespace."""
    carried = carried_paths((PROJECT_ROOT, sys.prefix))
    detach_inherited_mounts(PRIVATE_DIRS)
    for target in overlay_order(OVERLAY_DIRS, disk):
        layer = os.path.join(disk, target.strip("/"))
        upper, work = os.path.join(layer, "upper"), os.path.join(layer, "work")
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        _mount("overlay", target, "overlay", 0,
               f"lowerdir={target},upperdir={upper},workdir={work}")

    def mount_private() -> None:
        _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _carry_into_private_dirs(carried, mount_private)
    _umount_lazy("/proc")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _umount_lazy("/sys")
    _mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("bpf", "/sys/fs/bpf", "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700")
    for source, target, fstype in (("cgroup2", "/sys/fs/cgroup", "cgroup2"),
                                   ("tracefs", "/sys/kernel/tracing", "tracefs"),
                                   ("debugfs", "/sys/kernel/debug", "debugfs")):
        with contextlib.suppress(OSError):   # optional: bcc tracing tools use them
            _mount(source, target, fstype, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(BOOT_ID_FILE, "w", encoding="ascii") as fh:
        fh.write(boot_id + "\n")
    _mount(BOOT_ID_FILE, KERNEL_BOOT_ID, "", MS_BIND)
    _mount(BOOT_ID_FILE, KERNEL_BOOT_ID, "", MS_BIND | MS_REMOUNT | MS_RDONLY)
    for path, mode in (("/run/lock", 0o1777), (LOG_DIR, 0o755), ("/run/netns", 0o755)):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)


# ---------------------------------------------------------------- services

class Service:
    """A unit's runtime state."""

    def __init__(self, name: str):
        self.name = name
        self.unit: Unit | None = None
        self.pid: int | None = None
        self.state = "inactive"         # inactive, running, failed, exited
        self.restarts = 0
        self.last_exit: str | None = None
        self.started_at: float | None = None
        self.stopping = False
        self.restart_at: float | None = None
        self.starts: deque = deque(maxlen=START_LIMIT[0])
        self.error: str | None = None

    def to_dict(self) -> dict:
        return {"state": self.state, "pid": self.pid, "restarts": self.restarts,
                "lastExit": self.last_exit, "startedAt": self.started_at,
                "enabled": is_enabled(self.name), "error": self.error,
                "ignoredKeys": list(self.unit.ignored) if self.unit else []}


def is_enabled(name: str) -> bool:
    return os.path.lexists(os.path.join(ENABLED_DIR, name))


def load_unit(name: str) -> Unit:
    path = os.path.join(UNIT_DIR, name)
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_unit(fh.read(), name)
    except FileNotFoundError:
        raise UnitError([f"{name}: no such unit in {UNIT_DIR}"]) from None


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def _open_log(path: str) -> int:
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def spawn(unit: Unit) -> int:
    """Fork and exec a unit's command in its own session; returns the pid."""
    for rdir in unit.runtime_directories:
        os.makedirs(os.path.join("/run", rdir), mode=0o755, exist_ok=True)
    out_path = unit.stdout_path or os.path.join(LOG_DIR, unit.name.rsplit(".", 1)[0] + ".log")
    err_path = unit.stderr_path or out_path
    env = dict(BASE_ENV, **unit.environment)
    pid = os.fork()
    if pid:
        return pid
    try:                                        # child: never returns
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        null = os.open("/dev/null", os.O_RDONLY)
        out = _open_log(out_path)
        err = out if err_path == out_path else _open_log(err_path)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, 65536)
        os.chdir(unit.working_directory)
        os.execve(unit.exec_start[0], list(unit.exec_start), env)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"nodeinit: cannot start {unit.name}: {exc}\n".encode())
    os._exit(127)


def listening_on(port: int) -> bool:
    """Whether a TCP socket listens on `port` in this network namespace."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


class Init:
    """The init's state and main loop."""

    def __init__(self, hostname: str, boot_id: str):
        self.hostname = hostname
        self.boot_id = boot_id
        self.services: dict[str, Service] = {}
        self.booted = False
        self.exit_code: int | None = None
        self.pending_signals: list[int] = []

    # -- status
    def status(self) -> dict:
        return {"hostname": self.hostname, "bootId": self.boot_id, "booted": self.booted,
                "services": {n: s.to_dict() for n, s in sorted(self.services.items())}}

    def write_status(self) -> None:
        tmp = STATUS_FILE + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.status(), fh, indent=2, sort_keys=True)
        os.replace(tmp, STATUS_FILE)

    def service(self, name: str) -> Service:
        if name not in self.services:
            self.services[name] = Service(name)
        return self.services[name]

    # -- start/stop
    def start(self, name: str) -> tuple[bool, str]:
        svc = self.service(name)
        if svc.state == "running":
            return False, f"{name} is already running (pid {svc.pid})"
        try:
            svc.unit = load_unit(name)
        except UnitError as exc:
            svc.state, svc.error = "failed", "; ".join(exc.problems)
            return False, svc.error
        svc.stopping, svc.restart_at, svc.error = False, None, None
        svc.pid = spawn(svc.unit)
        svc.state, svc.started_at = "running", time.time()
        svc.starts.append(svc.started_at)
        return True, f"started {name} (pid {svc.pid})"

    def stop(self, name: str) -> tuple[bool, str]:
        svc = self.services.get(name)
        svc_pid = svc.pid if svc else None
        if svc is None or svc.state != "running" or svc_pid is None:
            if svc is not None:
                svc.restart_at = None
            return False, f"{name} is not running"
        svc.stopping = True
        timeout = svc.unit.timeout_stop_sec if svc.unit else 5.0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(svc_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._wait_one(svc_pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(svc_pid, 0)
            self._exited(svc_pid, "killed by SIGKILL (stop timeout)")
        return True, f"stopped {name}"

    def _wait_one(self, pid: int) -> bool:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            self._exited(pid, "gone")
            return True
        if got == pid:
            self._exited(pid, describe_exit(status), status)
            return True
        return False

    def _exited(self, pid: int, how: str, status: int | None = None) -> None:
        for svc in self.services.values():
            if svc.pid != pid:
                continue
            svc.pid, svc.last_exit = None, how
            failed = status is None or not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
            if svc.stopping:
                svc.state = "inactive"
            else:
                svc.state = "failed" if failed else "exited"
                policy = svc.unit.restart if svc.unit else "no"
                if policy == "always" or (policy == "on-failure" and failed):
                    if len(svc.starts) == START_LIMIT[0] and \
                            time.time() - svc.starts[0] < START_LIMIT[1]:
                        svc.error = "start limit hit; not restarting"
                    else:
                        svc.restart_at = time.monotonic() + (svc.unit.restart_sec if svc.unit
                                                             else 1.0)
            svc.stopping = False

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, describe_exit(status), status)

    def run_restarts(self) -> None:
        now = time.monotonic()
        for svc in list(self.services.values()):
            if svc.restart_at is not None and svc.restart_at <= now and svc.state != "running":
                svc.restart_at = None
                svc.restarts += 1
                self.start(svc.name)

    def next_timeout(self) -> float:
        times = [s.restart_at for s in self.services.values() if s.restart_at is not None]
        return max(0.0, min(times) - time.monotonic()) if times else 5.0

    # -- boot and shutdown
    def boot(self) -> None:
        enabled = sorted(os.listdir(ENABLED_DIR)) if os.path.isdir(ENABLED_DIR) else []
        order = [u for u in EARLY_UNITS if u in enabled]
        order += [u for u in enabled if u not in EARLY_UNITS]
        for name in order:
            self.start(name)
            if name == "sshd.service":
                deadline = time.monotonic() + 10
                while not listening_on(SSH_PORT) and time.monotonic() < deadline:
                    self.reap()
                    time.sleep(0.02)
        self.booted = True
        self.write_status()

    def shutdown(self) -> None:
        for name in reversed(sorted(self.services)):
            self.stop(name)

    # -- control requests
    def handle(self, request: dict) -> dict:
        cmd, name = request.get("cmd"), request.get("unit")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd in ("reboot", "poweroff"):
            self.exit_code = REBOOT_EXIT if cmd == "reboot" else 0
            return {"ok": True, "changed": True, "message": f"{cmd} scheduled"}
        if not isinstance(name, str) or "/" in name or not name.endswith(".service"):
            return {"ok": False, "message": f"invalid unit name {name!r} (NAME.service)"}
        if cmd == "start":
            changed, msg = self.start(name)
        elif cmd == "stop":
            changed, msg = self.stop(name)
        elif cmd == "restart":
            self.stop(name)
            changed, msg = self.start(name)
            changed = changed or self.service(name).state == "running"
        else:
            return {"ok": False, "message": f"unknown command {cmd!r}"}
        ok = self.service(name).state == "running" or cmd == "stop"
        return {"ok": ok, "changed": changed, "message": msg}

    def serve_one(self, server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            try:
                reply = self.handle(json.loads(data or b"{}"))
            except (ValueError, AttributeError) as exc:
                reply = {"ok": False, "message": f"bad request: {exc}"}
            self.write_status()
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def loop(self, server: socket.socket, wakeup_r: int) -> int:
        while self.exit_code is None:
            ready, _, _ = select.select([server, wakeup_r], [], [], self.next_timeout())
            if wakeup_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_r, 512)
            for sig in self.pending_signals[:]:
                self.pending_signals.remove(sig)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    self.exit_code = 0
                elif sig in (signal.SIGHUP, signal.SIGUSR1):
                    self.exit_code = REBOOT_EXIT
            self.reap()
            self.run_restarts()
            if server in ready:
                self.serve_one(server)
            self.write_status()
        self.shutdown()
        return self.exit_code


def init_main(argv: list[str] | None = None) -> int:
    """PID 1 of a namespace node (started by the local provider's node supervisor)."""
    parser = argparse.ArgumentParser(prog="nodeinit")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--disk", required=True, help="directory with the node's overlay layers")
    parser.add_argument("--report-fd", type=int, required=True,
                        help="pipe to the supervisor: 'pid N', then 'booted BOOTID'")
    args = parser.parse_args(argv)
    report = os.fdopen(args.report_fd, "w", buffering=1)
    # /proc is still the host's here: it names this process by its pid outside the node.
    report.write(f"pid {os.readlink('/proc/self')}\n")
    boot_id = str(uuid.uuid4())
    mount_node_filesystems(os.path.abspath(args.disk), boot_id)
    socket.sethostname(args.hostname)
    init = Init(args.hostname, boot_id)

    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_r, False)
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _f: init.pending_signals.append(signum))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(CONTROL_SOCKET)
    server.listen(16)
    init.write_status()
    init.boot()
    report.write(f"booted {boot_id}\n")
    report.close()
    return init.loop(server, wakeup_r)


# ---------------------------------------------------------------- nodectl

def request(payload: dict, timeout: float = 60) -> dict:
    """Send one request to this node's init and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(CONTROL_SOCKET)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b"{}")


def _set_enabled(name: str, enabled: bool) -> bool:
    link = os.path.join(ENABLED_DIR, name)
    if enabled:
        if not os.path.exists(os.path.join(UNIT_DIR, name)):
            raise UnitError([f"{name}: no such unit in {UNIT_DIR}"])
        if os.path.lexists(link):
            return False
        os.makedirs(ENABLED_DIR, exist_ok=True)
        os.symlink(os.path.join("..", "units", name), link)
        return True
    if not os.path.lexists(link):
        return False
    os.unlink(link)
    return True


def ctl_main(argv: list[str] | None = None) -> int:
    """`nodectl`: control the units of this namespace node (like a small systemctl)."""
    parser = argparse.ArgumentParser(
        prog="nodectl", description="Control units on a namespace node (nodeinit).")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    for cmd in ("start", "stop", "restart", "enable", "disable", "is-active", "is-enabled"):
        p = sub.add_parser(cmd)
        p.add_argument("unit")
        if cmd in ("enable", "disable"):
            p.add_argument("--now", action="store_true", help="also start/stop it")
    st = sub.add_parser("status")
    st.add_argument("unit", nargs="?")
    sub.add_parser("reboot")
    sub.add_parser("poweroff")
    args = parser.parse_args(argv)
    name = getattr(args, "unit", None)
    if name and not name.endswith(".service"):
        name += ".service"
    try:
        if args.cmd in ("enable", "disable"):
            changed = _set_enabled(name, args.cmd == "enable")
            reply = {"ok": True, "changed": changed,
                     "message": f"{args.cmd}d {name}" if changed else f"{name} unchanged"}
            if args.now:
                now = request({"cmd": "start" if args.cmd == "enable" else "stop",
                               "unit": name})
                reply = {"ok": now["ok"], "changed": changed or now.get("changed", False),
                         "message": reply["message"] + "; " + now["message"]}
        elif args.cmd == "is-enabled":
            reply = {"ok": is_enabled(name), "message": "enabled" if is_enabled(name)
                     else "disabled"}
        elif args.cmd in ("status", "is-active"):
            status = request({"cmd": "status"})["status"]
            if name:
                svc = status["services"].get(name, {"state": "inactive"})
                reply = {"ok": args.cmd == "status" or svc["state"] == "running",
                         "message": svc["state"], "service": svc}
            else:
                reply = {"ok": True, "message": "", "status": status}
        else:
            reply = request({"cmd": args.cmd, "unit": name})
    except UnitError as exc:
        reply = {"ok": False, "message": "; ".join(exc.problems)}
    except OSError as exc:
        reply = {"ok": False, "message": f"cannot reach nodeinit at {CONTROL_SOCKET}: {exc}"}
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif reply.get("status"):
        print(json.dumps(reply["status"], indent=2, sort_keys=True))
    else:
        print(reply.get("message", ""))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(init_main())
