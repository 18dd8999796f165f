"""The runtime side of CNI: which plugin runs with what (pure)."""

from __future__ import annotations

import pytest

from cni_cilium.cni import conflist
from cni_harness.cluster.cniruntime import CniCallError, plugin_calls

pytestmark = pytest.mark.unit


def test_add_calls_each_plugin_with_name_version_and_cni_env():
    conf = conflist("10.100.1.0/24")
    conf["plugins"].append({"type": "bandwidth"})
    calls = plugin_calls(conf, "ADD", "c1", "/run/netns/p", "eth0", "default", "web")
    assert [c[0] for c in calls] == ["cilium-cni", "bandwidth"]
    _plugin_type, env, stdin = calls[0]
    assert stdin == {"type": "cilium-cni", "ipam": {"subnet": "10.100.1.0/24"},
                     "name": "cilium", "cniVersion": "1.0.0"}
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_NETNS"] == "/run/netns/p"
    assert "K8S_POD_NAME=web" in env["CNI_ARGS"].split(";")
    assert "K8S_POD_NAMESPACE=default" in env["CNI_ARGS"].split(";")


def test_del_runs_plugins_in_reverse_order():
    conf = {"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "a"}, {"type": "b"}]}
    assert [c[0] for c in plugin_calls(conf, "DEL", "c", "", "eth0", "d", "p")] == ["b", "a"]


def test_a_list_without_plugins_is_an_error():
    with pytest.raises(CniCallError, match="no plugins"):
        plugin_calls({"name": "n", "plugins": []}, "ADD", "c", "/x", "eth0", "d", "p")
