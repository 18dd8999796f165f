"""The job run for one matrix entry, where the entry's kernel runs.

Inside a qemu guest (or directly on this host for the `local` provider):
`python -m cni_harness.matrix.entryjob SPEC.json`. It prepares what the local cluster provider
needs in a guest (bpffs, kernel headers links, writable state dirs), records what the
kernel says about itself, runs live preflight once per matrix profile, then the suites.
Everything goes to the spec's `out` directory (shared with the host for a guest):

    job.log            progress lines (the host streams them)
    guest.json         facts reported from inside: kernel release, OS, accel, uptime
    preflight/P.json   `cni-cilium preflight --json --config P.yaml` per profile (+ P.rc)
    suites/            `cni-harness run` output: per-suite JUnit and logs, report.md/html
    job.json           what ran and how long it took
    rc                 written last: 0 when the job completed (the host judges results)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import yaml

ENTRY_ENV = "CNI_HARNESS_MATRIX_ENTRY"
# Everything an entry job (and the host around it) writes in the entry's directory.
OUTPUTS = ("job.log", "guest.json", "preflight", "suites", "job.json", "job-error.txt", "rc",
           "job-spec.json", "console.log", "guest-shell.sh", "deploy.json")


def clear_outputs(out: str) -> None:
    """Remove what an earlier run left in an entry directory (and nothing else), so a
    failed run can never be judged by an older run's files."""
    for name in OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


@dataclass
class JobSpec:
    """What the host asks the entry job to do."""

    entry: str
    out: str
    suites: list[str] = field(default_factory=list)
    profiles: dict[str, dict] = field(default_factory=dict)
    k: str | None = None
    guest: bool = False
    accel: str = "host"
    headers: list[str] = field(default_factory=list)    # host's kernel headers (build, source)
    time_scale: float = 1.0                # CNI_HARNESS_TIME_SCALE for everything the job runs

    @classmethod
    def load(cls, path: str) -> JobSpec:
        with open(path, encoding="utf-8") as fh:
            return cls(**json.load(fh))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=2)


class JobLog:
    """Progress lines to stdout and to job.log (flushed, so the host sees them at once)."""

    def __init__(self, path: str):
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {message}"
        print(line, flush=True)
        self.fh.write(line + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _mounted(path: str, fstype: str) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return any(line.split()[1:3] == [path, fstype] for line in fh)


def _writable(path: str) -> bool:
    probe = os.path.join(path, f".cni-harness-write-{os.getpid()}")
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError:
        return False
    return True


def prepare_guest(spec: JobSpec, log: Callable[[str], None]) -> dict[str, str]:
    """Make a virtme-ng guest a host the local provider can use; report what was done."""
    done: dict[str, str] = {}
    if not _mounted("/sys/fs/bpf", "bpf"):
        subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)
        done["bpffs"] = "mounted /sys/fs/bpf"
    release = os.uname().release
    moddir = f"/lib/modules/{release}"
    # virtme-ng links the modules in from a tmpfs over /lib/modules. Local-provider nodes
    # see /usr through an overlay, which does not carry that submount: replace it by the
    # same link in the guest's writable /usr so bcc in a node finds build/ too.
    modules_root = os.path.realpath("/lib/modules")
    if _mounted(modules_root, "tmpfs"):
        target = os.readlink(moddir) if os.path.islink(moddir) else ""
        subprocess.run(["umount", modules_root], check=True)
        if target and not os.path.lexists(moddir):
            os.symlink(target, moddir)
        done["modules"] = f"{moddir} -> {target or '(no modules)'} in the guest's /usr"
    if os.path.islink(moddir) and not os.path.isdir(moddir):
        raise RuntimeError(f"{moddir} -> {os.readlink(moddir)} is not visible in the guest "
                           "(is the kernel cache under a directory virtme-ng hides?)")
    os.makedirs(moddir, exist_ok=True)
    for name, target in zip(("build", "source"), spec.headers):
        link = os.path.join(moddir, name)
        if not os.path.exists(link):
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(target, link)
            done[name] = f"linked {link} -> {target}"
    # virtme-ng leaves /root read-only; Ansible, ssh and pip write under $HOME.
    if not _writable("/root"):
        scratch = "/run/cni-harness-root"
        for sub in ("upper", "work"):
            os.makedirs(os.path.join(scratch, sub), exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "cni-harness-root", "-o",
                        f"lowerdir=/root,upperdir={scratch}/upper,workdir={scratch}/work",
                        "/root"], check=True)
        done["root"] = "writable overlay on /root"
    for path in ("/var/lib", "/run", "/tmp", "/etc", "/root"):
        if not _writable(path):
            raise RuntimeError(f"{path} is not writable in the guest")
    # Local-provider node disks are overlays; overlayfs refuses the guest's own overlay
    # root as their upper layer, so cluster state lives on a tmpfs (gone with the guest).
    from ..state import state_root

    root = state_root()
    if not _mounted(root, "tmpfs"):
        os.makedirs(root, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "cni-harness-state", root], check=True)
        done["state"] = f"tmpfs on {root}"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    for key, value in done.items():
        log(f"guest prep: {key}: {value}")
    return done


def kernel_facts(spec: JobSpec) -> dict:
    """What the running kernel and system say about themselves."""
    from cni_cilium.preflight import parse_os_release

    uname = os.uname()
    with open("/etc/os-release", encoding="utf-8") as fh:
        os_release = parse_os_release(fh.read())
    with open("/proc/uptime", encoding="utf-8") as fh:
        uptime = float(fh.read().split()[0])
    return {"entry": spec.entry, "kernelRelease": uname.release, "kernelVersion": uname.version,
            "machine": uname.machine, "os": os_release.get("PRETTY_NAME", ""),
            "accel": spec.accel, "timeScale": spec.time_scale, "guest": spec.guest,
            "uptimeAtJobStart": round(uptime, 1),
            "cpus": os.cpu_count() or 0}


def run_preflights(profiles: dict[str, dict], out: str, log: Callable[[str], None],
                   extra_args: Sequence[str] = ()) -> dict[str, bool]:
    """`cni-cilium preflight --json --config P.yaml` once per profile, the JSON, exit
    status and stderr kept per profile in `out`. Live on this kernel unless `extra_args`
    describe another machine (`--os-release FILE --kernel-release R`)."""
    os.makedirs(out, exist_ok=True)
    cli = os.path.join(os.path.dirname(sys.executable), "cni-cilium")
    verdicts = {}
    for profile, settings in profiles.items():
        config = os.path.join(out, f"{profile}.yaml")
        with open(config, "w", encoding="utf-8") as fh:
            yaml.safe_dump(settings or {}, fh)
        started = time.monotonic()
        res = subprocess.run([cli, "preflight", "--json", "--config", config, *extra_args],
                             capture_output=True, text=True, check=False)
        for suffix, text in (("json", res.stdout), ("rc", f"{res.returncode}\n"),
                             ("stderr", res.stderr)):
            if text.strip():
                with open(os.path.join(out, f"{profile}.{suffix}"), "w",
                          encoding="utf-8") as fh:
                    fh.write(text)
        verdicts[profile] = res.returncode == 0
        log(f"preflight {profile}: {'supported' if res.returncode == 0 else 'refused'}"
            f" (exit {res.returncode}, {time.monotonic() - started:.0f} s)")
    return verdicts


def run(spec: JobSpec) -> int:
    from ..suites.runner import run_suites
    from ..timescale import ENV as TIME_SCALE_ENV

    os.makedirs(spec.out, exist_ok=True)
    log = JobLog(os.path.join(spec.out, "job.log"))
    record: dict = {"entry": spec.entry, "steps": {}, "timeScale": spec.time_scale}
    os.environ[TIME_SCALE_ENV] = str(spec.time_scale)    # the suites' clusters and Ansible
    try:
        if spec.guest:
            record["guestPrep"] = prepare_guest(spec, log)
        info = kernel_facts(spec)
        with open(os.path.join(spec.out, "guest.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
        log(f"entry {spec.entry}: kernel {info['kernelRelease']} ({info['accel']}, waits x"
            f"{spec.time_scale:g}), up {info['uptimeAtJobStart']} s")
        started = time.monotonic()
        verdicts = run_preflights(spec.profiles, os.path.join(spec.out, "preflight"), log)
        record["steps"]["preflight"] = round(time.monotonic() - started, 1)
        if spec.suites and verdicts.get("default", True):
            started = time.monotonic()
            results, _summary = run_suites(
                spec.suites, os.path.join(spec.out, "suites"), k=spec.k,
                env={ENTRY_ENV: spec.entry}, progress=log, title=f"{spec.entry}: suites",
                facts={"kernel": info["kernelRelease"]})
            record["steps"]["suites"] = round(time.monotonic() - started, 1)
            record["suites"] = {r.name: r.outcome().status for r in results}
        elif spec.suites:
            log("suites not run: preflight refused this kernel with the default profile")
            record["suitesSkipped"] = "preflight refused (default profile)"
    finally:
        with open(os.path.join(spec.out, "job.json"), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
        log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cni_harness.matrix.entryjob SPEC.json", file=sys.stderr)
        return 2
    spec = JobSpec.load(args[0])
    try:
        rc = run(spec)
    except Exception as exc:
        print(f"entry job failed: {exc!r}", file=sys.stderr)
        with open(os.path.join(spec.out, "job-error.txt"), "w", encoding="utf-8") as fh:
            fh.write(f"{exc}\n\n{traceback.format_exc()}")
        rc = 1
    with open(os.path.join(spec.out, "rc"), "w", encoding="utf-8") as fh:
        fh.write(f"{rc}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
