"""The overlay's MTU rule and which modes encapsulate."""

from __future__ import annotations

import pytest

from cni_cilium.tunnel import VXLAN_OVERHEAD, pod_mtu, uses_overlay

pytestmark = pytest.mark.unit


def test_only_vxlan_encapsulates():
    assert uses_overlay("VXLAN") and not uses_overlay("Disabled")


def test_pod_mtu_leaves_room_for_the_outer_headers_in_vxlan_only():
    assert VXLAN_OVERHEAD == 14 + 20 + 8 + 8
    assert pod_mtu("VXLAN", 1500) == 1450
    assert pod_mtu("VXLAN", 9000) == 8950
    assert pod_mtu("Disabled", 1500) == 1500
