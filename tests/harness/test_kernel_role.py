"""The OS-family kernel layer (playbooks/roles/kernel): syntax, lint, and each family's values
as Ansible itself templates them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from cni_harness import PROJECT_ROOT

PLAYBOOKS = os.path.join(PROJECT_ROOT, "playbooks")
ROLE = os.path.join(PLAYBOOKS, "roles", "kernel")

# What the vagrant inventory and each family's facts give the role (its kernel_os_family,
# kernel_running and kernel_el_major default to the facts).
FAMILIES = {
    "ubuntu-20.04-hwe": {"kernel_os_family": "Debian", "kernel_running": "5.15.0-91-generic",
                         "kernel_el_major": "20", "kernel_source": "hwe",
                         "kernel_package": "linux-generic-hwe-20.04"},
    "debian-12": {"kernel_os_family": "Debian", "kernel_running": "6.1.0-25-amd64",
                  "kernel_el_major": "12", "kernel_source": "stock",
                  "kernel_package": "linux-image-amd64"},
    "centos-7-elrepo": {"kernel_os_family": "RedHat",
                        "kernel_running": "6.9.7-1.el7.elrepo.x86_64", "kernel_el_major": "7",
                        "kernel_source": "elrepo", "kernel_package": "kernel-ml"},
    "centos-8-elrepo": {"kernel_os_family": "RedHat",
                        "kernel_running": "6.6.9-1.el8.elrepo.x86_64", "kernel_el_major": "8",
                        "kernel_source": "elrepo", "kernel_package": "kernel-ml"},
}


def run(venv_bin, tool: str, *args: str, cwd: str = PLAYBOOKS, extra_env: dict | None = None
        ) -> subprocess.CompletedProcess:
    # Local runs use this interpreter: discovery may find a shim that is not a real Python.
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
           "ANSIBLE_ROLES_PATH": os.path.join(PLAYBOOKS, "roles"),
           "PATH": f"{os.path.dirname(venv_bin(tool))}:{os.environ['PATH']}",
           **(extra_env or {})}
    return subprocess.run([venv_bin(tool), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def vars_file(tmp_path, name: str, extra: dict | None = None) -> str:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump({**FAMILIES[name], "kernel_manage": True, **(extra or {})}))
    return str(path)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("playbook", ["site.yml", "kernel.yml"])
def test_syntax_check_with_each_os_family(tmp_path, venv_bin, name, playbook):
    result = run(venv_bin, "ansible-playbook", "-i", "localhost,", "--syntax-check",
                 "-e", f"@{vars_file(tmp_path, name)}", playbook)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
@pytest.mark.slow
def test_ansible_lint_production_profile(venv_bin):
    result = run(venv_bin, "ansible-lint", "--offline", "--profile", "production",
                 "site.yml", "kernel.yml", "roles/kernel")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
@pytest.mark.parametrize("name, expected", [
    ("ubuntu-20.04-hwe", {"kernel_headers_package": "linux-headers-5.15.0-91-generic"}),
    ("debian-12", {"kernel_headers_package": "linux-headers-6.1.0-25-amd64"}),
    ("centos-7-elrepo", {
        "kernel_headers_package": "kernel-ml-devel",
        "kernel_elrepo_baseurl": "https://elrepo.org/linux/kernel/el7/$basearch/",
        "key": "https://www.elrepo.org/RPM-GPG-KEY-elrepo.org"}),
    ("centos-8-elrepo", {
        "kernel_elrepo_baseurl": "https://elrepo.org/linux/kernel/el8/$basearch/",
        "key": "https://www.elrepo.org/RPM-GPG-KEY-v2-elrepo.org"}),
])
def test_each_family_templates_to_its_packages(tmp_path, venv_bin, name, expected):
    """Ansible loads the family's variables the way the role does and templates them."""
    play = tmp_path / "show.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Show the kernel role's values", "hosts": "all", "gather_facts": False,
        "tasks": [
            {"name": "Load the role's family map",
             "ansible.builtin.include_vars": os.path.join(ROLE, "vars", "main.yml")},
            {"name": "Load the family's variables",
             "ansible.builtin.include_vars":
                 os.path.join(ROLE, "vars", "{{ kernel_families[kernel_os_family] }}.yml")},
            {"name": "Write them out", "ansible.builtin.copy": {
                "dest": str(tmp_path / "shown.json"), "mode": "0644",
                "content": "{{ shown | to_json }}"}, "vars": {"shown": {
                "kernel_headers_package": "{{ kernel_headers_package }}",
                "kernel_elrepo_baseurl": "{{ kernel_elrepo_baseurl | default('') }}",
                "key": "{{ kernel_elrepo_keys[kernel_el_major]"
                       " | default('') if kernel_elrepo_keys is defined else '' }}"}}},
        ]}]))
    result = run(venv_bin, "ansible-playbook", "-i", "localhost,", "-c", "local",
                 "-e", f"@{vars_file(tmp_path, name)}", str(play))
    assert result.returncode == 0, result.stdout + result.stderr
    shown = json.loads((tmp_path / "shown.json").read_text())
    for key, value in expected.items():
        assert shown[key] == value, (key, shown)


@pytest.mark.unit
def test_the_role_changes_nothing_when_not_asked_to_manage_the_kernel(venv_bin):
    """Default (namespace nodes): every task skips; running it twice is a no-op."""
    for _ in range(2):
        result = run(venv_bin, "ansible-playbook", "-i", "localhost,", "-c", "local",
                     "kernel.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        recap = re.search(r"^localhost\s*:(.*)$", result.stdout, re.M).group(1)
        stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap)}
        assert stats["changed"] == 0 and stats["failed"] == 0, recap
        assert stats["skipped"] >= 3, recap


@pytest.mark.unit
@pytest.mark.parametrize("kernel, supported", [("4.15.0-213-generic", False),
                                               ("5.15.0-91-generic", True)])
def test_preflight_judges_the_kernel_the_inventory_names(tmp_path, venv_bin, kernel, supported):
    """HWE/ELRepo entries boot a stock kernel: preflight judges the one about to be installed
    (preflight_kernel_release from the vagrant inventory), and stops before any change."""
    play = tmp_path / "preflight.yml"
    play.write_text(yaml.safe_dump([{"name": "Preflight", "hosts": "all",
                                     "gather_facts": True, "gather_subset": ["min"],
                                     "roles": [{"role": "preflight"}]}]))
    result = run(venv_bin, "ansible-playbook", "-i", "localhost,", "-c", "local",
                 "-e", f"preflight_kernel_release={kernel}", str(play))
    assert (result.returncode == 0) is supported, result.stdout + result.stderr
    if not supported:
        assert f"kernel {kernel} is older than 5.8" in result.stdout
