"""The lab's reading of an agent's metrics and where its tools are (pure; the rest runs in
the e2e suites)."""

import pytest

from cni_harness.suites.lab import parse_samples, programmed

pytestmark = pytest.mark.unit

EXPOSITION = """# HELP cni_cilium_datapath_drops_total Packets dropped, by reason.
# TYPE cni_cilium_datapath_drops_total counter
cni_cilium_datapath_drops_total{reason="dsr_option"} 5
cni_cilium_datapath_drops_total{reason="fib"} 0
cni_cilium_endpoints 3
"""


def test_samples_keep_their_labels_and_values():
    assert parse_samples(EXPOSITION) == {
        'cni_cilium_datapath_drops_total{reason="dsr_option"}': 5.0,
        'cni_cilium_datapath_drops_total{reason="fib"}': 0.0,
        "cni_cilium_endpoints": 3.0}


def test_an_empty_exposition_has_no_samples():
    assert parse_samples("") == {}


def test_the_tools_the_lab_installs_are_where_it_looks():
    import os

    from cni_harness.suites.lab import TOOLS, TOOLS_DIR

    assert all(os.path.isfile(os.path.join(TOOLS_DIR, name)) for name in TOOLS), TOOLS_DIR


FRONTENDS = [{"service": "default/web", "type": "ClusterIP", "selected": ["a", "b"]},
             {"service": "default/web", "type": "NodePort", "selected": ["a"]},
             {"service": "default/solo", "type": "ClusterIP", "selected": []}]


def test_a_service_is_programmed_with_its_frontends_and_the_backends_asked_for():
    assert programmed(FRONTENDS, "default/web")
    assert programmed(FRONTENDS, "default/web", {"ClusterIP": 2})
    assert not programmed(FRONTENDS, "default/web", {"ClusterIP": 2, "NodePort": 2})
    assert programmed(FRONTENDS, "default/solo") and not programmed(
        FRONTENDS, "default/solo", {"ClusterIP": 1})
    assert not programmed(FRONTENDS, "default/gone")
