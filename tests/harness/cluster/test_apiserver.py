"""`cni-harness apply/delete` as a user runs them: validation, allocation, distribution."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from cni_harness.cluster.apiserver import NODE_MANIFEST_DIR
from cni_harness.testing import run_cluster_name

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MIXED = """\
apiVersion: v1
kind: Service
metadata: {name: api-good}
spec:
  type: NodePort
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: api-bad}
spec:
  type: Weird
  ports: [{port: 99999}]
---
apiVersion: v1
kind: Pod
metadata: {name: sneaky}
spec: {nodeName: node1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-manual-1
  labels: {kubernetes.io/service-name: api-manual}
addressType: IPv4
endpoints: [{addresses: [10.100.3.7]}]
ports: [{name: http, port: 8080}]
"""


def cli(venv_bin, *args, stdin=None):
    return subprocess.run([venv_bin("cni-harness"), *args, "--name", run_cluster_name("lct")],
                          input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def manifests(provider, node: str) -> dict[str, dict]:
    out = provider.exec(node, ["sh", "-c", f"cd {NODE_MANIFEST_DIR} && for f in *.yaml; do "
                               "[ -e \"$f\" ] && echo \"## $f\" && cat \"$f\"; done; true"]).stdout
    files = {}
    for chunk in out.split("## ")[1:]:
        name, _, text = chunk.partition("\n")
        files[name] = yaml.safe_load(text)
    return files


def test_invalid_objects_are_refused_by_name_and_field_valid_ones_kept(local_cluster,
                                                                        venv_bin):
    res = cli(venv_bin, "apply", "-f", "-", "--json", stdin=MIXED)
    assert res.returncode == 2
    report = json.loads(res.stdout)
    assert sorted(report["applied"]) == ["EndpointSlice default/api-manual-1",
                                         "Service default/api-good"]
    problems = "\n".join(report["problems"])
    assert "Service default/api-bad: spec.type: invalid value 'Weird'" in problems
    assert "Service default/api-bad: spec.ports[0].port: invalid port 99999" in problems
    assert "Pod default/sneaky: kind: Pod objects come from `cni-harness pod run`" in problems
    for node in ("node1", "node2", "node3"):
        files = manifests(local_cluster, node)
        good = files["service-default-api-good.yaml"]
        assert good["spec"]["clusterIP"].startswith("10.96.")
        assert 30000 <= good["spec"]["ports"][0]["nodePort"] <= 32767
        assert files["endpointslice-default-api-manual-1.yaml"]["endpoints"][0][
            "addresses"] == ["10.100.3.7"]
        assert "service-default-api-bad.yaml" not in files


def test_a_bad_new_version_never_replaces_the_good_one(local_cluster, venv_bin):
    before = manifests(local_cluster, "node2")["service-default-api-good.yaml"]
    bad = MIXED.split("---")[0].replace("port: 80,", "port: 0,")
    res = cli(venv_bin, "apply", "-f", "-", stdin=bad)
    assert res.returncode == 2 and "spec.ports[0].port" in res.stderr
    assert manifests(local_cluster, "node2")["service-default-api-good.yaml"] == before
    res = cli(venv_bin, "apply", "-f", "-", stdin=MIXED.split("---")[0])
    assert res.returncode == 0 and "unchanged" in res.stdout


def test_delete_removes_the_files_from_every_node(local_cluster, venv_bin):
    res = cli(venv_bin, "delete", "-f", "-", stdin=MIXED)
    assert res.returncode == 2                       # the Pod document is refused again
    assert "Service default/api-good deleted" in res.stdout
    assert "Service default/api-bad not found" in res.stderr
    for node in ("node1", "node3"):
        names = set(manifests(local_cluster, node))
        assert not {n for n in names if "api-" in n}, names


def test_unreadable_input_exits_2(local_cluster, venv_bin, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [unclosed\n")
    res = cli(venv_bin, "apply", "-f", str(path), "-f", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2
    assert "not valid YAML" in res.stderr and "cannot read" in res.stderr
