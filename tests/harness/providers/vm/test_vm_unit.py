"""The vm provider's pure parts: image key and bake command, per-node identity, qemu
command lines, ssh access and inventory, journal replay, availability."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from cni_harness.matrix.kernels import AptSource
from cni_harness.matrix.matrix import load_matrix
from cni_harness.providers.local import fabric
from cni_harness.providers.local.addressing import plan_cluster
from cni_harness.providers.local.netns import cmdline
from cni_harness.providers.local.node import uplink_mac
from cni_harness.providers.vagrant import install_packages
from cni_harness.providers.vm import image as vm_image
from cni_harness.providers.vm import machine
from cni_harness.providers.vm import provider as vm_provider
from cni_harness.providers.vm.provider import VmProvider
from cni_harness.signals import sigterm_exits

pytestmark = pytest.mark.unit

MIRROR = AptSource(("deb",), ("http://mirror.example/debian",), ("bookworm",), ("main",),
                   "/usr/share/keyrings/debian-archive-keyring.gpg")


def sleeper(*args: str) -> subprocess.Popen:
    """A process with `args` on its command line, returned once the kernel shows them (the
    exec that Popen waits for sets the command line a moment later)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])
    deadline = time.monotonic() + 10
    while not cmdline(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def fake_image(tmp_path) -> vm_image.BakedImage:
    return vm_image.BakedImage(
        key="bookworm-0123", suite="bookworm", root=str(tmp_path / "root.img"),
        kernel=str(tmp_path / "vmlinuz"), initrd=str(tmp_path / "initrd.img"),
        kernel_release="6.1.0-35-amd64", packages=("python3",), mirror="http://m",
        baked_at=0.0, bake_seconds=1.0)


# ---------------------------------------------------------------- image

def test_suite_comes_from_the_matrix_os_entries():
    matrix = load_matrix()
    assert vm_image.suite_for(matrix.os_entry("debian-12")) == "bookworm"
    assert vm_image.suite_for(matrix.os_entry("debian-11")) == "bullseye"
    with pytest.raises(vm_image.ImageError, match="Debian images only"):
        vm_image.suite_for(matrix.os_entry("ubuntu-22.04"))


def test_image_packages_hold_the_install_roles_list_and_what_nodes_need():
    packages = vm_image.image_packages(install_packages("Debian"))
    assert set(install_packages("Debian")) <= set(packages)
    for needed in ("systemd", "systemd-sysv", "openssh-server", "python3", "python3-apt",
                   "linux-image-amd64", "linux-headers-amd64", "iproute2", "tcpdump", "curl"):
        assert needed in packages
    assert list(packages) == sorted(set(packages))


def test_image_key_changes_with_suite_packages_and_bake_version_only():
    spec = vm_image.ImageSpec("bookworm", ("a", "b"))
    assert spec.key() == vm_image.ImageSpec("bookworm", ("b", "a")).key()
    assert spec.key().startswith("bookworm-")
    others = {vm_image.ImageSpec("bullseye", ("a", "b")).key(),
              vm_image.ImageSpec("bookworm", ("a", "b", "c")).key(),
              vm_image.ImageSpec("bookworm", ("a", "b"), spec.bake_version + 1).key()}
    assert spec.key() not in others and len(others) == 3


def test_mmdebstrap_uses_the_hosts_mirror_and_the_suite():
    spec = vm_image.ImageSpec("bullseye", ("python3", "systemd"))
    argv = vm_image.mmdebstrap_argv(spec, MIRROR, "/tmp/rootfs")
    assert argv[0] == "mmdebstrap" and "--include=python3,systemd" in argv
    assert argv[-3:] == ["bullseye", "/tmp/rootfs",
                         "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                         "http://mirror.example/debian bullseye main"]


def test_baked_files_boot_the_identity_from_fw_cfg():
    files = vm_image.baked_files()
    script, mode = files[vm_image.IDENTITY_SCRIPT]
    assert mode == 0o755 and vm_image.IDENTITY_FW_CFG in script
    assert vm_image.BOOTS_FILE in script
    unit = files[f"/etc/systemd/system/{vm_image.IDENTITY_UNIT}"][0]
    assert "Before=network-pre.target ssh.service" in unit
    assert files["/etc/fstab"][0].startswith(vm_image.ROOT_DEVICE + " / ext4")
    assert "HostKey /etc/ssh/ssh_host_ed25519_key" in \
        files["/etc/ssh/sshd_config.d/cni-harness.conf"][0]


def test_a_cache_entry_counts_only_when_complete(tmp_path):
    entry = tmp_path / "bookworm-0123"
    entry.mkdir()
    image = fake_image(entry)
    (entry / "image.json").write_text(json.dumps(image.to_dict()))
    assert vm_image.load_image(str(entry)) is None        # files missing
    for path in (image.root, image.kernel, image.initrd):
        open(path, "wb").close()
    assert vm_image.load_image(str(entry)) == image


def test_ensure_image_does_not_bake_what_the_cache_holds(tmp_path, monkeypatch):
    spec = vm_image.ImageSpec("bookworm", ("python3",))
    entry = tmp_path / spec.key()
    entry.mkdir()
    image = fake_image(entry)
    for path in (image.root, image.kernel, image.initrd):
        open(path, "wb").close()
    (entry / "image.json").write_text(json.dumps(image.to_dict()))
    monkeypatch.setattr(vm_image, "_bake", lambda *a: pytest.fail("baked again"))
    assert vm_image.ensure_image(spec, str(tmp_path)) == image


# ---------------------------------------------------------------- identity

def test_identity_files_carry_name_address_and_keys():
    plan = plan_cluster("idt", 3)
    node = plan.node("node2")
    files = machine.identity_files(plan, node, "ssh-ed25519 AAAAclient c", ("PRIV\n", "PUB"))
    assert files["/etc/hostname"] == ("node2\n", 0o644)
    hosts = files["/etc/hosts"][0]
    assert all(f"{n.ip}\t{n.name}" in hosts for n in plan.nodes)
    env = dict(line.split("=", 1) for line in files["/etc/cni-harness/node.env"][0].split())
    assert env == {"NODE_NAME": "node2", "NODE_IP": "10.99.0.12", "NODE_PREFIX": "24",
                   "ROUTER_IP": "10.99.0.1", "UPLINK_MAC": uplink_mac("10.99.0.12")}
    assert files["/etc/ssh/ssh_host_ed25519_key"] == ("PRIV\n", 0o600)
    assert files["/root/.ssh/authorized_keys"] == ("ssh-ed25519 AAAAclient c\n", 0o600)


def test_identity_tar_is_root_owned_deterministic_and_keeps_modes():
    files = {"/root/.ssh/authorized_keys": ("key\n", 0o600), "/etc/hostname": ("n\n", 0o644)}
    raw = machine.identity_tar(files)
    assert raw == machine.identity_tar(dict(reversed(list(files.items()))))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["root/.ssh"].isdir() and members["root/.ssh"].mode == 0o700
        assert members["root/.ssh/authorized_keys"].mode == 0o600
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())
        assert tar.extractfile("etc/hostname").read() == b"n\n"


# ---------------------------------------------------------------- qemu

def test_qemu_argv_puts_the_nic_on_the_fabric_tap_with_the_nodes_mac(tmp_path):
    files = machine.VmFiles(str(tmp_path))
    argv = machine.qemu_argv("cni-c-node1", fake_image(tmp_path), files, "node1",
                             "02:00:0a:63:00:0b", machine.VmResources(1024, 1, kvm=False))
    text = " ".join(argv)
    assert argv[0] == machine.QEMU
    assert "tap,id=uplink,ifname=node1,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=uplink,mac=02:00:0a:63:00:0b" in argv
    assert f"name={vm_image.IDENTITY_FW_CFG},file={files.identity}" in argv
    assert "-accel tcg" in text and "-daemonize" in argv and files.pidfile in argv
    assert f"file={files.overlay},if=virtio,format=qcow2" in text
    assert "net.ifnames=0" in argv[argv.index("-append") + 1]
    assert machine.argv_name(argv) == "cni-c-node1"
    kvm = machine.qemu_argv("x", fake_image(tmp_path), files, "t", "m",
                            machine.VmResources(kvm=True))
    assert "-accel kvm -cpu host" in " ".join(kvm)


def test_overlay_and_tap_commands(tmp_path):
    image = fake_image(tmp_path)
    assert machine.overlay_argv(image, "/o.qcow2") == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", image.root, "-F", "raw", "/o.qcow2"]
    assert machine.tap_commands("node2") == [
        "tuntap add dev node2 mode tap", "link set node2 master br0", "link set node2 up"]


def test_a_pidfile_counts_only_for_the_process_it_names(tmp_path):
    files = machine.VmFiles(str(tmp_path))
    proc = sleeper("-name", "cni-c-node1,process=cni-c-node1", "-pidfile", files.pidfile)
    try:
        (tmp_path / "qemu.pid").write_text(f"{proc.pid}\n")
        assert machine.qemu_pid(files, "cni-c-node2") is None     # another node's name
        assert machine.qemu_pid(files, "cni-c-node1") == proc.pid
        assert machine.kill_vm(files, "cni-c-node1")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert machine.qemu_pid(files, "cni-c-node1") is None
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- provider

@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("CNI_HARNESS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CNI_HARNESS_TIME_SCALE", "4")
    return tmp_path


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _provider() -> VmProvider:
    return VmProvider("vmu", nodes=3, resources=machine.VmResources(kvm=False))


def test_ssh_config_reaches_nodes_through_the_fabric_namespace(state):
    p = _provider()
    plan = p.plan()
    p._write_access_files(plan, {n.name: f"ssh-ed25519 KEY{n.index} x" for n in plan.nodes},
                          4.0)
    config = _read(p.ssh_config_path)
    assert "Host node1 vmu-node1\n  HostName 10.99.0.11\n  HostKeyAlias vmu-node1\n" in config
    assert "ProxyCommand nsenter --net=/run/netns/vmu-fabric nc %h %p" in config
    assert "ControlMaster auto" in config and f"IdentityFile {p.ssh_key_path}" in config
    known = _read(os.path.join(p.state_dir, "ssh", "known_hosts"))
    assert "vmu-node2 ssh-ed25519 KEY2\n" in known
    inventory = yaml.safe_load(_read(p.inventory_path()))["all"]
    assert inventory["vars"]["cni_cilium_init"] == "systemd"
    assert inventory["vars"]["cni_cilium_manage_packages"] is True
    assert inventory["vars"]["cni_time_scale"] == 4.0
    assert inventory["vars"]["ansible_ssh_common_args"] == f"-F {p.ssh_config_path}"
    cp = inventory["children"]["control_plane"]["hosts"]
    assert cp["node1"]["cni_node_ip"] == "10.99.0.11" and cp["node1"]["ansible_host"] == "node1"
    assert set(inventory["children"]["workers"]["hosts"]) == {"node2", "node3"}


def test_exec_command_is_ssh_for_nodes_and_nsenter_for_the_outside(state):
    p = _provider()
    argv = p.exec_command("node2", ["sh", "-c", "echo 'a b'"])
    assert argv[:3] == ["ssh", "-F", p.ssh_config_path] and "node2" in argv
    assert argv[-2:] == ["--", "sh -c 'echo '\"'\"'a b'\"'\"''"]
    assert p.exec_command("client", ["true"]) == [
        "nsenter", "--net=/run/netns/vmu-client", "--", "true"]
    with pytest.raises(KeyError):
        p.exec_command("node9", ["true"])


def test_plan_is_the_local_providers(state):
    from cni_harness.providers.local.provider import LocalProvider

    assert _provider().plan() == LocalProvider("vmu", nodes=3).plan()


def test_leftovers_name_a_vm_running_without_its_pidfile_and_the_state_dir(state):
    p = _provider()
    assert p.leftovers() == []
    name = machine.vm_name("vmu", "node2")
    proc = sleeper("-name", machine.name_option(name))      # no pidfile, no journal
    try:
        os.makedirs(p.state_dir)
        assert p.leftovers() == [f"VM {name} (pid {proc.pid})", f"state dir {p.state_dir}"]
    finally:
        proc.kill()
        proc.wait()
    os.rmdir(p.state_dir)
    assert p.leftovers() == []


def test_down_replays_the_journal_after_a_crash(state, monkeypatch):
    p = _provider()
    files = p.files("node1")
    os.makedirs(files.directory)
    deleted = []
    monkeypatch.setattr(fabric, "delete_netns", deleted.append)
    vm = sleeper("-name", "cni-vmu-node1,process=cni-vmu-node1", "-pidfile", files.pidfile)
    bystander = sleeper()
    try:
        with open(files.pidfile, "w") as fh:
            fh.write(str(vm.pid))
        for op, fields in (("state_dir", {"path": p.state_dir}),
                           ("netns", {"name": "vmu-fabric"}), ("netns", {"name": "vmu-client"}),
                           ("vm", {"node": "node1", "name": "cni-vmu-node1",
                                   "pidfile": files.pidfile}),
                           ("vm", {"node": "node2", "name": "cni-vmu-node2",
                                   "pidfile": p.files("node2").pidfile})):
            p.journal.record(op, **fields)
        with open(p.journal.path, "a") as fh:
            fh.write('{"op": "netns", "na')          # torn by kill -9
        assert p.status()["state"] == "degraded"
        p.down()
        assert vm.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
        assert deleted == ["vmu-client", "vmu-fabric"]
        assert not os.path.exists(p.state_dir)
    finally:
        for proc in (vm, bystander):
            proc.kill()
            proc.wait()


def test_availability_names_what_is_missing_without_side_effects(monkeypatch):
    monkeypatch.setattr(vm_provider, "_which", lambda tool: None)
    available = VmProvider.availability()
    assert not available.ok
    reason = available.reason()
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "nc", "mmdebstrap"):
        assert tool in reason


def test_time_scale_defaults_to_tcg_when_not_set(monkeypatch):
    monkeypatch.delenv("CNI_HARNESS_TIME_SCALE", raising=False)
    assert _provider().time_scale() == vm_provider.TCG_SCALE
    kvm = VmProvider("vmu", resources=machine.VmResources(kvm=True))
    assert kvm.time_scale() == 1.0
    monkeypatch.setenv("CNI_HARNESS_TIME_SCALE", "3")
    assert _provider().time_scale() == 3.0


def test_wait_exit_sees_a_process_end(tmp_path):
    files = machine.VmFiles(str(tmp_path))
    started = time.monotonic()
    assert machine.wait_exit(files, "cni-x-node1", 5)      # no pidfile: nothing runs
    assert time.monotonic() - started < 1


def test_sigterm_unwinds_through_finally_inside_sigterm_exits():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as exc, sigterm_exits():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)
    assert exc.value.code == 128 + signal.SIGTERM and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_kvm_choice_comes_from_the_cluster_record_without_probing(state, monkeypatch):
    monkeypatch.setattr(vm_provider, "kvm_usable", lambda: pytest.fail("probed"))
    p = VmProvider("vmu")
    os.makedirs(p.state_dir)
    with open(os.path.join(p.state_dir, "cluster.json"), "w") as fh:
        json.dump({"name": "vmu", "nodes": 3, "kvm": True}, fh)
    assert p._resources().kvm is True


def test_nodectl_on_a_vm_is_systemctl(tmp_path):
    text, mode = vm_image.baked_files()[vm_image.NODECTL]
    shim = tmp_path / "nodectl"
    shim.write_text(text.replace("exec systemctl", "exec echo systemctl"))
    shim.chmod(mode)
    out = subprocess.run([str(shim), "--json", "stop", "cni-cilium-agent.service"],
                         capture_output=True, text=True, check=True).stdout
    assert out == "systemctl stop cni-cilium-agent.service\n"
