"""The vagrant provider: plans, generated definitions, Vagrant's own checks, the CLI."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

from cni_harness.matrix.matrix import load_matrix
from cni_harness.providers.vagrant import (
    TUNNEL_ROLE_STEPS,
    VAGRANTFILE,
    PlanError,
    check_host,
    cluster_spec,
    format_plan,
    install_packages,
    installed_boxes,
    inventory,
    kernel_role_vars,
    parse_box_list,
    parse_ssh_config,
    plan,
    plan_matrix,
    provider_loadable,
    validate_definition,
    validate_definitions,
    write_definition,
)

MATRIX = load_matrix()
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
HAS_VAGRANT = shutil.which("vagrant") is not None
needs_vagrant = pytest.mark.skipif(not HAS_VAGRANT, reason="vagrant is not installed "
                                   "(scripts/setup.sh installs it)")


def plans(**options):
    return plan_matrix(MATRIX.os_entries, **options)


def by_name(name: str, **options):
    (p,) = plan_matrix(MATRIX.os_entries, [name], **options)
    return p


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cni_harness.cli", *args],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


# --- plans (pure) ---------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_every_entry_is_planned_with_its_box_and_nodes(provider):
    result = plans(provider=provider)
    assert [p.entry for p in result] == [e.name for e in MATRIX.os_entries]
    for p, entry in zip(result, MATRIX.os_entries):
        assert p.box == entry.boxes[provider]
        assert [n.name for n in p.nodes] == [f"node{i}" for i in range(1, entry.nodes + 1)]
        assert [n.role for n in p.nodes] == ["control-plane"] + ["worker"] * (entry.nodes - 1)
        network = ipaddress.IPv4Network(p.network)
        assert all(ipaddress.IPv4Address(n.ip) in network for n in p.nodes)
        assert [n.pod_cidr for n in p.nodes] == [f"10.100.{i}.0/24"
                                                 for i in range(1, entry.nodes + 1)]


@pytest.mark.unit
def test_entry_networks_never_overlap_and_fit_virtualbox_defaults():
    networks = [ipaddress.IPv4Network(p.network) for p in plans()]
    vbox_allowed = ipaddress.IPv4Network("192.168.56.0/21")
    assert all(n.subnet_of(vbox_allowed) for n in networks)
    for i, a in enumerate(networks):
        for b in networks[i + 1:]:
            assert not a.overlaps(b), (a, b)


@pytest.mark.unit
@pytest.mark.parametrize("profile", sorted(MATRIX.profiles))
def test_plan_verdict_is_the_matrix_expectation(profile):
    for p in plans(profile=profile, profile_settings=MATRIX.profiles[profile]):
        verdict = "supported" if p.preflight["supported"] else "unsupported"
        assert verdict == p.expected[profile], (p.entry, p.preflight)


@pytest.mark.unit
def test_unsupported_entries_stop_at_preflight_before_any_change():
    for p in plans():
        if p.preflight["supported"]:
            continue
        assert p.steps[0].startswith("preflight:")
        assert "stops here, nothing changed" in p.steps[-1]
        assert not any(step.startswith("kernel:") for step in p.steps), p.entry


@pytest.mark.unit
def test_os_family_steps():
    hwe = by_name("ubuntu-20.04-hwe").steps
    install = hwe.index(next(s for s in hwe if "linux-generic-hwe-20.04" in s))
    reboot = hwe.index(next(s for s in hwe if "reboot" in s))
    headers = hwe.index(next(s for s in hwe if "linux-headers-$(uname -r)" in s))
    bcc = hwe.index(next(s for s in hwe if "python3-bpfcc" in s))
    assert install < reboot < headers < bcc

    debian = by_name("debian-12").steps
    assert any("linux-headers-$(uname -r)" in s for s in debian)
    assert any(s.startswith("install:") and "python3-bpfcc" in s for s in debian)
    assert not any(s.startswith("kernel:") and "reboot" in s for s in debian)
    assert list(debian[-2:]) == [TUNNEL_ROLE_STEPS["tunnel_mode"], TUNNEL_ROLE_STEPS["reboot"]]

    for name in ("centos-7-elrepo", "centos-8-elrepo"):
        steps = " | ".join(by_name(name).steps)
        order = [steps.index(token) for token in
                 ("ELRepo key", "kernel-ml kernel-ml-devel", "grubby --set-default",
                  "reboot into the ELRepo kernel", "python3-bcc")]
        assert order == sorted(order), steps
        assert by_name(name).os_family == "RedHat"


@pytest.mark.unit
def test_package_names_come_from_the_roles():
    assert "python3-bpfcc" in install_packages("Debian")
    assert "python3-bcc" in install_packages("RedHat")
    assert kernel_role_vars("RedHat")["kernel_headers_package"] == "{{ kernel_package }}-devel"
    with pytest.raises(PlanError, match="Suse"):
        kernel_role_vars("Suse")


@pytest.mark.unit
def test_steps_follow_site_yml_roles():
    from cni_harness.providers.vagrant import site_roles

    assert site_roles() == ["preflight", "kernel", "install", "kube_proxy", "configure",
                            "tunnel_mode", "reboot"]
    p = by_name("debian-12", site=["preflight", "kernel", "install", "configure", "kube_proxy"])
    assert p.steps[0].startswith("preflight:")
    assert p.steps[1].startswith("kernel:")
    assert p.steps[2].startswith("install: python3")
    assert list(p.steps[3:]) == ["configure", "kube_proxy"]
    # A site.yml without the kernel role still gets the kernel steps right after preflight.
    p = by_name("debian-12", site=["preflight", "install"])
    assert p.steps[1].startswith("kernel:") and "kernel.yml" in p.steps[1]
    assert p.steps[-1].startswith("install:")


@pytest.mark.unit
def test_plan_rejects_bad_options_with_a_named_problem():
    entry = MATRIX.os_entry("debian-12")
    with pytest.raises(PlanError, match="hyperv"):
        plan(entry, 0, provider="hyperv")
    with pytest.raises(PlanError, match="node count 11"):
        plan(entry, 0, nodes=11)
    with pytest.raises(PlanError, match="no OS entry 'fedora-40'"):
        plan_matrix(MATRIX.os_entries, ["fedora-40"])
    with pytest.raises(PlanError, match="outside"):
        plan(entry, 99)


@pytest.mark.unit
def test_format_plan_lists_box_nodes_and_steps():
    text = format_plan(by_name("centos-8-elrepo", nodes=2))
    assert "box generic/centos8" in text
    assert "node1   control-plane" in text and "node2   worker" in text
    assert "node3" not in text
    assert "vagrant up --provider libvirt" in text and "vagrant destroy" in text
    assert "7. install: python3" in text and "12. suites" in text
    stopped = format_plan(by_name("ubuntu-18.04"))
    assert "3. preflight: unsupported" in stopped and "4. vagrant destroy" in stopped
    assert "suites" not in stopped


# --- generated definitions ---------------------------------------------------------------------


@pytest.mark.unit
def test_definition_is_the_committed_vagrantfile_plus_a_deterministic_spec(tmp_path):
    p = by_name("ubuntu-22.04")
    out = write_definition(p, str(tmp_path / "a"))
    again = write_definition(by_name("ubuntu-22.04"), str(tmp_path / "b"))
    for name in ("Vagrantfile", "cluster.json"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read()
    with open(os.path.join(out, "Vagrantfile"), "rb") as a, open(VAGRANTFILE, "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(out, "cluster.json"), encoding="utf-8") as fh:
        spec = json.load(fh)
    assert spec == cluster_spec(p)
    assert spec["boxes"] == {"libvirt": "generic/ubuntu2204", "virtualbox": "generic/ubuntu2204"}
    assert spec["netmask"] == "255.255.255.192"
    assert [n["ip"] for n in spec["nodes"]] == [n.ip for n in p.nodes]


# --- what Vagrant prints -------------------------------------------------------------------


@pytest.mark.unit
def test_ssh_config_and_inventory():
    with open(os.path.join(FIXTURES, "vagrant-ssh-config.txt"), encoding="utf-8") as fh:
        hosts = parse_ssh_config(fh.read())
    assert hosts["node2"]["HostName"] == "192.168.121.203"
    assert hosts["node1"]["IdentityFile"].endswith("node1/libvirt/private_key")
    p = by_name("ubuntu-20.04-hwe", nodes=2)
    doc = yaml.safe_load(inventory(p, "/run dir/ssh_config", hosts))
    node1 = doc["all"]["children"]["control_plane"]["hosts"]["node1"]
    assert node1["ansible_ssh_common_args"] == "-F '/run dir/ssh_config'"
    assert node1["cni_node_ip"] == p.nodes[0].ip
    assert "node-role.kubernetes.io/control-plane" in node1["cni_node_labels"]
    assert list(doc["all"]["children"]["workers"]["hosts"]) == ["node2"]
    assert doc["all"]["vars"]["kernel_source"] == "hwe"
    assert doc["all"]["vars"]["kernel_package"] == "linux-generic-hwe-20.04"
    assert doc["all"]["vars"]["kernel_manage"] is True
    assert doc["all"]["vars"]["preflight_kernel_release"] == "5.15.0-91-generic"
    stock = yaml.safe_load(inventory(by_name("debian-12", nodes=2), "/x", hosts))
    assert "preflight_kernel_release" not in stock["all"]["vars"]
    with pytest.raises(PlanError, match="node3"):
        inventory(by_name("ubuntu-20.04-hwe"), "/x", hosts)


@pytest.mark.unit
def test_box_list_parsing():
    text = ("1,,ui,info,generic/centos8 (libvirt%!(VAGRANT_COMMA) 4.3.12)\n"
            "1,,box-name,generic/centos8\n1,,box-provider,libvirt\n1,,box-version,4.3.12\n"
            "1,,box-name,debian/bookworm64\n1,,box-provider,virtualbox\n")
    assert parse_box_list(text) == {("generic/centos8", "libvirt"),
                                    ("debian/bookworm64", "virtualbox")}
    assert parse_box_list("1,,ui,warn,There are no installed boxes!") == set()


# --- Vagrant itself ------------------------------------------------------------------------------


@pytest.fixture
def vagrant_home(tmp_path, monkeypatch):
    """Vagrant's state for this test only (boxes, data), not the user's ~/.vagrant.d."""
    home = tmp_path / "vagrant.d"
    monkeypatch.setenv("VAGRANT_HOME", str(home))
    monkeypatch.setenv("VAGRANT_CHECKPOINT_DISABLE", "1")
    return home


@needs_vagrant
@pytest.mark.slow
def test_vagrant_validates_every_generated_definition(tmp_path, vagrant_home):
    if not provider_loadable("libvirt"):
        pytest.skip("vagrant-libvirt is not installed: the libvirt block cannot be checked")
    all_plans = plans(provider="libvirt")
    results = validate_definitions(all_plans, str(tmp_path))
    assert [r["entry"] for r in results] == [p.entry for p in all_plans]
    for p, result in zip(all_plans, results):
        assert result["validate"], (p.entry, result["output"])
        assert result["provider_block_checked"] is True
        assert "validated successfully" in result["output"]
        # python-vagrant's status(): every node of the entry, known to libvirt, not created.
        assert result["status"] == {n.name: "not_created" for n in p.nodes}, p.entry
        assert result["status_ok"] is True


@pytest.mark.unit
def test_virtualbox_block_is_checked_only_where_virtualbox_is_installed():
    if provider_loadable("virtualbox"):
        pytest.skip("VirtualBox is installed: the vagrant validate test covers it")
    pytest.skip("VirtualBox (VBoxManage) is absent: Vagrant cannot load its provider, so "
                "only the core settings of the virtualbox definitions are validatable here "
                "(the same Vagrantfile as libvirt's, validated above)")


@needs_vagrant
def test_vagrant_validate_catches_a_wrong_provider_setting(tmp_path, vagrant_home):
    if not provider_loadable("libvirt"):
        pytest.skip("vagrant-libvirt is not installed")
    directory = write_definition(by_name("debian-12"), str(tmp_path / "broken"))
    path = os.path.join(directory, "Vagrantfile")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace("libvirt.memory =", "libvirt.memroy ="))
    result = validate_definition(directory, "libvirt", True)
    assert result.returncode != 0
    assert "memroy" in result.stdout + result.stderr


@needs_vagrant
def test_vagrant_validate_catches_a_bad_spec(tmp_path, vagrant_home):
    p = by_name("debian-12")
    directory = write_definition(p, str(tmp_path / "bad"))
    with open(os.path.join(directory, "cluster.json"), encoding="utf-8") as fh:
        spec = json.load(fh)
    spec["nodes"][1]["ip"] = "not-an-ip"
    with open(os.path.join(directory, "cluster.json"), "w", encoding="utf-8") as fh:
        json.dump(spec, fh)
    result = validate_definition(directory, "libvirt", provider_loadable("libvirt"))
    assert result.returncode != 0
    assert "not-an-ip" in result.stdout + result.stderr


def _add_empty_box(tmp_path, name: str, provider: str) -> None:
    """A real (unbootable) box: enough for Vagrant to list it."""
    src = tmp_path / f"box-{provider}"
    src.mkdir()
    (src / "metadata.json").write_text(json.dumps({"provider": provider, "format": "qcow2",
                                                   "virtual_size": 1}))
    (src / "box.img").write_bytes(b"")
    box = tmp_path / f"{provider}.box"
    with tarfile.open(box, "w:gz") as tar:
        for item in ("metadata.json", "box.img"):
            tar.add(src / item, arcname=item)
    subprocess.run(["vagrant", "box", "add", "--name", name, str(box)], check=True,
                   capture_output=True, timeout=120)


@needs_vagrant
def test_boxes_are_found_or_named_missing(tmp_path, vagrant_home):
    if not provider_loadable("libvirt"):
        pytest.skip("vagrant-libvirt is not installed")
    _add_empty_box(tmp_path, "cni-test/empty", "libvirt")
    assert ("cni-test/empty", "libvirt") in installed_boxes()
    result = check_host("libvirt", ["cni-test/empty", "generic/centos8"], libvirt_driver="qemu")
    missing = " | ".join(result.missing)
    assert "cni-test/empty" not in missing
    assert "box generic/centos8 for libvirt (vagrant box add generic/centos8" in missing


# --- the CLI -------------------------------------------------------------------------------------


@pytest.mark.unit
def test_cli_plan_lists_every_entry():
    result = cli("vagrant", "plan")
    assert result.returncode == 0, result.stderr
    for entry in MATRIX.os_entries:
        assert f"{entry.name}: libvirt box {entry.boxes['libvirt']}" in result.stdout
    doc = json.loads(cli("vagrant", "plan", "--json", "debian-11", "--nodes", "2").stdout)
    (entry,) = doc["entries"]
    assert entry["entry"] == "debian-11" and len(entry["nodes"]) == 2


@pytest.mark.unit
def test_cli_bad_input_exits_2_naming_the_problem():
    result = cli("vagrant", "plan", "fedora-40")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no OS entry 'fedora-40'; known: " + ", ".join(e.name for e in MATRIX.os_entries)]
    result = cli("vagrant", "plan", "--profile", "nope")
    assert result.returncode == 2 and "unknown profile 'nope'" in result.stderr


@pytest.mark.unit
def test_cli_without_vagrant_says_what_is_missing_and_exits_3(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    for args in (["check", "debian-12"], ["up", "debian-12"], ["validate"]):
        result = cli("vagrant", *args, env=env)
        assert result.returncode == 3, (args, result.stderr)
        assert "vagrant" in result.stderr and "apt-get install vagrant" in result.stderr
        assert "Traceback" not in result.stderr


@needs_vagrant
def test_cli_check_names_what_this_host_lacks():
    result = cli("vagrant", "check", "debian-12", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == (0 if doc["ok"] else 3)
    if not any(os.path.exists(s) for s in ("/run/libvirt/libvirt-sock",
                                            "/var/run/libvirt/libvirt-sock")):
        assert any("libvirtd" in m for m in doc["missing"])


@pytest.mark.unit
def test_generated_inventory_is_valid_ansible_inventory(tmp_path, venv_bin):
    with open(os.path.join(FIXTURES, "vagrant-ssh-config.txt"), encoding="utf-8") as fh:
        hosts = parse_ssh_config(fh.read())
    path = tmp_path / "inventory.yml"
    path.write_text(inventory(by_name("debian-12", nodes=2), "/x", hosts))
    result = subprocess.run([venv_bin("ansible-inventory"), "-i", str(path), "--list"],
                            capture_output=True, text=True, check=True, timeout=60)
    hostvars = json.loads(result.stdout)["_meta"]["hostvars"]
    assert sorted(hostvars) == ["node1", "node2"]
    assert hostvars["node2"]["cni_pod_cidr"] == "10.100.2.0/24"


@pytest.mark.unit
def test_matrix_dry_run_entry_point_for_the_runner():
    from cni_harness.cli.vagrant import matrix_dry_run

    status, text = matrix_dry_run(["centos-7-elrepo"], vagrant_provider="virtualbox")
    assert status == 0
    assert "centos-7-elrepo: virtualbox box generic/centos7" in text
    status, text = matrix_dry_run(as_json=True, nodes=2)
    doc = json.loads(text)
    assert len(doc["entries"]) == len(MATRIX.os_entries)
    assert all(len(e["nodes"]) == 2 for e in doc["entries"])
    status, text = matrix_dry_run(["nope"])
    assert status == 2 and text.startswith("error: no OS entry 'nope'")


@pytest.mark.unit
def test_provider_interface_before_anything_exists(tmp_path):
    from cni_harness.providers.base import ProviderUnavailable
    from cni_harness.providers.vagrant import VagrantProvider

    provider = VagrantProvider(by_name("debian-12", nodes=2), workdir=str(tmp_path))
    assert [n.name for n in provider.nodes()] == ["node1", "node2"]
    assert provider.nodes()[0].is_control_plane and not provider.nodes()[1].is_control_plane
    status = provider.status()
    assert status["entry"] == "debian-12" and status["vagrant_provider"] == "libvirt"
    assert [n["state"] for n in status["nodes"]] == ["unknown", "unknown"]
    provider.down()          # nothing was created: nothing to remove, no error
    with pytest.raises(KeyError, match="no node 'node9'; nodes: node1, node2"):
        provider.node("node9")
    available = provider.check()
    if not available.ok:     # here: no libvirtd, no box
        with pytest.raises(ProviderUnavailable, match="missing: "):
            provider.up()
        assert not os.path.exists(provider.directory)    # refused before writing anything


@pytest.mark.unit
def test_put_file_script_writes_atomically(tmp_path):
    """The script every remote provider's put_file runs, run here by sh."""
    from cni_harness.providers.base import put_file_script, run_text

    target = tmp_path / "etc" / "cni-cilium" / "config.yaml"
    result = run_text(["sh", "-c", put_file_script(str(target), 0o600)], b"a: 1\n", 10, True)
    assert result.returncode == 0 and isinstance(result.stdout, str)
    assert target.read_bytes() == b"a: 1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(target.parent)) == ["config.yaml"]
    with pytest.raises(ValueError, match="absolute"):
        put_file_script("relative/path", 0o644)
    with pytest.raises(subprocess.CalledProcessError):
        run_text(["sh", "-c", "exit 4"], None, 10, True)
