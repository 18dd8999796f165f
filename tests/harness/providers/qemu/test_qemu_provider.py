"""The qemu provider's pieces that need no guest: command lines, the virtiofsd shim, probes."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from cni_harness.providers.qemu import provider as qemu
from cni_harness.providers.qemu.virtiofsd_shim import ShimUsage, translate

unit = pytest.mark.unit


@unit
def test_shim_translates_what_virtme_ng_passes():
    # exactly the command line virtme-ng 1.x builds for the root filesystem
    args = ["--syslog", "--no-announce-submounts", "--socket-path", "/tmp/virtmeXYZ",
            "--shared-dir", "/", "--sandbox", "none", "--cache", "always"]
    plan = translate(args, daemon="/usr/lib/qemu/virtiofsd")
    assert plan.socket == "/tmp/virtmeXYZ"
    assert plan.argv == ["/usr/lib/qemu/virtiofsd", "--socket-path=/tmp/virtmeXYZ",
                         "-o", "source=/", "-o", "cache=always", "-o", "sandbox=chroot",
                         "-o", "log_level=warn"]


@unit
def test_shim_accepts_equals_form_and_maps_cache_modes():
    plan = translate(["--socket-path=/s", "--shared-dir=/d", "--cache=never"])
    assert "source=/d" in plan.argv and "cache=none" in plan.argv
    assert "cache=auto" in translate(["--socket-path=/s", "--shared-dir=/d"]).argv


@unit
@pytest.mark.parametrize("args", [["--shared-dir", "/d"], ["--socket-path", "/s"],
                                  ["--socket-path"]])
def test_shim_refuses_incomplete_command_lines(args):
    with pytest.raises(ShimUsage):
        translate(args)


@unit
def test_shim_answers_version_like_the_rust_daemon(tmp_path):
    # virtme-ng only picks a daemon whose `--version` exits 0
    qemu.prepare_tool_dir(str(tmp_path), "/bin/true")
    res = subprocess.run([str(tmp_path / "virtiofsd"), "--version"], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0 and "virtiofsd" in res.stdout
    assert os.readlink(tmp_path / "busybox-static") == "/bin/true"


@pytest.mark.probe
@pytest.mark.skipif(not os.access("/usr/lib/qemu/virtiofsd", os.X_OK),
                    reason="needs qemu's C virtiofsd (apt-get install qemu-system-common)")
def test_shim_starts_the_c_daemon_and_writes_its_pid(tmp_path):
    """The shim really starts qemu's daemon on a socket and hands virtme-ng its pid."""
    qemu.prepare_tool_dir(str(tmp_path / "tools"), "/bin/true")
    sock = tmp_path / "vfs.sock"
    share = tmp_path / "share"
    share.mkdir()
    shim = subprocess.Popen([str(tmp_path / "tools" / "virtiofsd"), "--socket-path", str(sock),
                             "--shared-dir", str(share), "--cache", "always"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "vfs.sock.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((tmp_path / "vfs.sock.pid").read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().split(b"\0")
        assert cmdline[0] == b"/usr/lib/qemu/virtiofsd"
        assert f"source={share}".encode() in cmdline
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(sock))           # the vhost-user socket accepts a connection
        client.close()
        os.kill(pid, 15)                      # what virtme-ng does at exit
        assert shim.wait(timeout=10) is not None
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()


@unit
def test_static_busybox_is_told_from_a_dynamic_binary():
    assert not qemu.is_static_elf(os.path.realpath(sys.executable))
    assert not qemu.is_static_elf(__file__)
    busybox = qemu.find_static_busybox()
    if busybox and shutil.which("file"):
        described = subprocess.run(["file", "-L", busybox], capture_output=True, text=True,
                                   check=False).stdout
        assert "statically linked" in described


@unit
def test_vng_command_line_tcg_and_kvm():
    spec = qemu.GuestSpec(image="/k/vmlinuz", command="echo hi", job_dir="/out/e1")
    argv = qemu.vng_argv(spec, "/venv/bin/vng")
    assert argv[:3] == ["/venv/bin/vng", "--run", "/k/vmlinuz"]
    assert "--disable-kvm" in argv and "--verbose" in argv
    assert argv[argv.index("--rwdir") + 1] == "/out/e1"
    assert argv[-2:] == ["--exec", "echo hi"]
    assert argv[argv.index("--memory") + 1] == "2G" and argv[argv.index("--cpus") + 1] == "2"
    kvm = qemu.vng_argv(qemu.GuestSpec(image="/k", command="x", job_dir="/o", kvm=True,
                                       interactive=True), "vng")
    assert "--disable-kvm" not in kvm and "--verbose" not in kvm and "--exec" not in kvm
    assert kvm[-2:] == ["--shell", "/o/guest-shell.sh"]


@unit
def test_guest_command_quotes_and_optionally_keeps_a_shell():
    line = qemu.guest_command(["/venv/bin/python", "-m", "cni_harness.matrix.entryjob",
                               "/out/my dir/spec.json"], {"PATH": "/a:/b", "X": "it's"})
    assert shlex.split(line.split(";")[0]) == ["export", "PATH=/a:/b", "X=it's"]
    assert "'/out/my dir/spec.json'" in line
    script = qemu.shell_script(line)
    assert script.startswith("#!/bin/bash\n" + line + "\n")
    assert script.rstrip().endswith("exec /bin/bash -i")


@unit
def test_availability_names_what_is_missing():
    result = qemu.availability()
    assert result.ok == (not result.missing)
    for item in result.missing:
        assert "(" in item                     # each says how to get it


@pytest.mark.probe
def test_kvm_probe_gives_a_verdict_with_a_reason():
    if not shutil.which(qemu.QEMU):
        pytest.skip("qemu-system-x86_64 is not installed")
    usable, why = qemu.kvm_usable()
    assert isinstance(usable, bool) and why
