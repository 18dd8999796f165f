"""Pod address allocation (pure) and its lease file."""

from __future__ import annotations

import pytest

from cni_cilium.ipam import (
    IpamError,
    LeaseStore,
    allocate,
    collect,
    empty_state,
    release,
    usable_range,
)

pytestmark = pytest.mark.unit

SUBNET = "10.100.1.0/29"      # hosts .1-.6; .1 is the gateway


def alive(_path):
    return True


def test_usable_range_skips_network_gateway_and_broadcast():
    assert usable_range(SUBNET) == [f"10.100.1.{i}" for i in range(2, 7)]
    with pytest.raises(IpamError, match="too small"):
        usable_range("10.0.0.0/31")


def test_allocation_is_stable_per_container_and_distinct_across_containers():
    ip1, state = allocate(empty_state(), SUBNET, "c1", "eth0", "/run/netns/a", alive)
    ip1_again, state = allocate(state, SUBNET, "c1", "eth0", "/run/netns/a", alive)
    ip2, state = allocate(state, SUBNET, "c2", "eth0", "/run/netns/b", alive)
    assert ip1 == ip1_again == "10.100.1.2" and ip2 == "10.100.1.3"
    assert state["leases"][ip2]["containerID"] == "c2"


def test_release_frees_and_rotation_reuses_freed_addresses_last():
    state = empty_state()
    for cid in ("c1", "c2"):
        _, state = allocate(state, SUBNET, cid, "eth0", "/ns", alive)
    freed, state = release(state, "c1", "eth0")
    assert freed == "10.100.1.2" and "10.100.1.2" not in state["leases"]
    ip3, state = allocate(state, SUBNET, "c3", "eth0", "/ns", alive)
    assert ip3 == "10.100.1.4"                     # not the just-freed .2
    assert release(state, "nobody", "eth0")[0] is None


def test_exhaustion_names_the_subnet_and_stale_leases_are_reclaimed():
    state = empty_state()
    for i in range(5):
        _, state = allocate(state, SUBNET, f"c{i}", "eth0", f"/run/netns/p{i}", alive)
    with pytest.raises(IpamError, match=r"no free address in 10\.100\.1\.0/29"):
        allocate(state, SUBNET, "c9", "eth0", "/ns", alive)
    ip, state = allocate(state, SUBNET, "c9", "eth0", "/ns",
                         lambda path: path != "/run/netns/p3")    # p3's pod died
    assert ip == "10.100.1.5" and state["leases"][ip]["containerID"] == "c9"


def test_gc_keeps_only_valid_attachments():
    state = empty_state()
    for cid in ("a", "b"):
        _, state = allocate(state, SUBNET, cid, "eth0", "/ns", alive)
    freed, state = collect(state, [("a", "eth0")])
    assert freed == ["10.100.1.3"] and list(state["leases"]) == ["10.100.1.2"]


def test_lease_store_persists_under_a_lock(tmp_path):
    with LeaseStore("10.100.1.0/24", str(tmp_path)) as store:
        ip, state = allocate(store.state, store.subnet, "c1", "eth0", "/ns", alive)
        store.save(state)
    with LeaseStore("10.100.1.0/24", str(tmp_path)) as store:
        assert store.state["leases"][ip]["containerID"] == "c1"
    assert (tmp_path / "10.100.1.0_24.json").exists()
