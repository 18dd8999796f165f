"""The CNI plugin's spec surface: environment, config, results and errors.

The plumbing itself (veth, routes, leases in a real node) is exercised by
tests/harness/cluster/test_pods.py on a local cluster.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from cni_cilium.cni import (
    SUPPORTED_VERSIONS,
    CniError,
    NetConf,
    add_result,
    conflist,
    host_veth_name,
    parse_config,
    parse_env,
    run,
)

pytestmark = pytest.mark.unit

GOOD = {"cniVersion": "1.0.0", "name": "cilium", "type": "cilium-cni",
        "ipam": {"subnet": "10.100.1.0/24"}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/p",
       "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=default"}


def test_env_and_config_parse():
    env = parse_env(ENV)
    assert (env.command, env.container_id, env.ifname) == ("ADD", "abc", "eth0")
    assert env.args == {"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "default"}
    conf = parse_config(json.dumps(GOOD), "ADD")
    assert (conf.subnet, conf.gateway, conf.cni_version) == ("10.100.1.0/24", "10.100.1.1",
                                                             "1.0.0")


@pytest.mark.parametrize("change, code, words", [
    ({"CNI_COMMAND": "FROB"}, 4, "CNI_COMMAND"),
    ({"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": "a-very-long-interface-name"}, 4, "CNI_IFNAME"),
    ({"CNI_NETNS": "relative"}, 4, "CNI_NETNS"),
    ({"CNI_ARGS": "novalue"}, 4, "CNI_ARGS"),
])
def test_bad_environment_gives_code_4(change, code, words):
    with pytest.raises(CniError) as err:
        parse_env({**ENV, **change})
    assert err.value.code == code and words in err.value.msg


@pytest.mark.parametrize("raw, code, words", [
    ("{not json", 6, "not valid JSON"),
    ("[1]", 6, "JSON object"),
    (json.dumps({**GOOD, "cniVersion": "9.9.9"}), 1, "unsupported '9.9.9'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "cniVersion"}), 7, "cniVersion"),
    (json.dumps({**GOOD, "ipam": {"subnet": "10.100.1.5/24"}}), 7, "ipam.subnet"),
    (json.dumps({**GOOD, "ipam": {}}), 7, "ipam.subnet"),
    (json.dumps({**GOOD, "type": "bridge"}), 7, "type"),
    (json.dumps({**GOOD, "name": ""}), 7, "name"),
    (json.dumps({**GOOD, "agentWaitSeconds": "soon"}), 7, "agentWaitSeconds"),
])
def test_bad_config_gives_the_spec_code(raw, code, words):
    with pytest.raises(CniError) as err:
        parse_config(raw, "ADD")
    assert err.value.code == code and words in err.value.msg


def test_run_answers_errors_in_the_spec_shape():
    status, doc = run(ENV, b"{broken")
    assert status == 1
    assert set(doc) == {"cniVersion", "code", "msg"} and doc["code"] == 6
    status, doc = run({**ENV, "CNI_COMMAND": "VERSION"}, json.dumps(GOOD).encode())
    assert status == 0 and doc["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_add_result_shape_follows_the_requested_version():
    conf = NetConf("1.0.0", "cilium", "10.100.1.0/24")
    res = add_result(conf, "10.100.1.5", "lxcabc", "aa:bb:cc:dd:ee:ff", "eth0",
                     "11:22:33:44:55:66", "/run/netns/p")
    assert res["ips"] == [{"address": "10.100.1.5/32", "gateway": "10.100.1.1",
                           "interface": 1}]
    assert res["interfaces"][1] == {"name": "eth0", "mac": "11:22:33:44:55:66",
                                    "sandbox": "/run/netns/p"}
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.100.1.1"}]
    old = add_result(NetConf("0.3.1", "cilium", "10.100.1.0/24"), "10.100.1.5", "h", "m",
                     "eth0", "m2", "/n")
    assert old["ips"][0]["version"] == "4" and old["cniVersion"] == "0.3.1"


def test_names_and_conflist():
    name = host_veth_name("0123456789abcdef")
    assert name.startswith("lxc") and len(name) == 14
    assert conflist("10.100.2.0/24")["plugins"][0]["ipam"]["subnet"] == "10.100.2.0/24"


def test_the_installed_executable_answers_version(venv_bin):
    res = subprocess.run([venv_bin("cilium-cni")], input=json.dumps({"cniVersion": "1.0.0"}),
                         env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True,
                         check=False, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "1.1.0" in json.loads(res.stdout)["supportedVersions"]
