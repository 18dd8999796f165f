"""What the agent's DaemonSet writes on a Kubernetes node before the agent starts."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from cni_cilium.kubenode import CNI_SHIM, conflist, install_cni, main


@pytest.mark.unit
def test_install_cni_writes_the_shim_and_the_conflist(tmp_path):
    written = install_cni("10.100.2.0/24", str(tmp_path / "bin"), str(tmp_path / "net.d"))
    shim, conf = written
    assert os.path.basename(shim) == "cilium-cni"
    assert os.stat(shim).st_mode & stat.S_IXUSR
    with open(conf, encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc == conflist("10.100.2.0/24")
    assert doc["plugins"][0] == {"type": "cilium-cni", "ipam": {"subnet": "10.100.2.0/24"}}
    # Idempotent: a second run leaves the same files and no temporaries.
    install_cni("10.100.2.0/24", str(tmp_path / "bin"), str(tmp_path / "net.d"))
    assert sorted(os.listdir(tmp_path / "bin")) == ["cilium-cni"]


@pytest.mark.unit
def test_the_shim_refuses_cleanly_without_an_agent(tmp_path):
    """No agent pid: a CNI error result on stdout and a non-zero exit, as the spec wants."""
    shim = tmp_path / "cilium-cni"
    shim.write_text(CNI_SHIM.replace("/run/cni-cilium/agent.pid", str(tmp_path / "none.pid")))
    shim.chmod(0o755)
    result = subprocess.run([str(shim)], capture_output=True, text=True, timeout=10,
                            check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"cniVersion": "1.0.0", "code": 11,
                                         "msg": "cni-cilium agent is not running"}


@pytest.mark.unit
def test_cli_with_a_given_pod_cidr(tmp_path, capsys):
    assert main(["install-cni", "--node", "n1", "--pod-cidr", "10.100.1.0/24",
                 "--bin-dir", str(tmp_path / "b"), "--conf-dir", str(tmp_path / "c")]) == 0
    assert "05-cilium.conflist" in capsys.readouterr().out
