"""tc clsact attachments of the programs, and checking that they are still there (edge).

Filters sit at a fixed priority and handle, so attaching again (a new agent after a restart,
or a self-heal) atomically replaces whatever program was there: packets are never left
without one.
"""

from __future__ import annotations

from dataclasses import dataclass

INGRESS = "ingress"
EGRESS = "egress"
_PARENTS = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}
FILTER_PRIO = 1
FILTER_HANDLE = 1
NAME_PREFIX = "cnic-"


def filter_name(program: str) -> str:
    """The tc filter name that marks a filter as ours and says which program it runs."""
    return NAME_PREFIX + program


@dataclass(frozen=True)
class Attachment:
    """A program that must run at one hook of one device."""

    device: str
    direction: str          # ingress / egress
    program: str

    def to_dict(self) -> dict:
        return {"device": self.device, "direction": self.direction, "program": self.program}


class TcError(RuntimeError):
    """A netlink tc operation failed."""


def ensure_clsact(ipr, ifindex: int) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as exc:
        if exc.code != 17:  # EEXIST
            raise TcError(f"clsact on ifindex {ifindex}: {exc}") from exc


def attach(ipr, ifindex: int, direction: str, prog_fd: int, program: str) -> None:
    """Attach (or atomically replace) the program at the device's hook."""
    from pyroute2.netlink.exceptions import NetlinkError

    ensure_clsact(ipr, ifindex)
    try:
        ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, parent=_PARENTS[direction],
               prio=FILTER_PRIO, fd=prog_fd, name=filter_name(program), direct_action=True)
    except NetlinkError as exc:
        raise TcError(f"{direction} filter on ifindex {ifindex}: {exc}") from exc


def attached_name(ipr, ifindex: int, direction: str) -> str | None:
    """Name of the bpf filter at our priority and handle, or None when there is none."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        filters = ipr.get_filters(index=ifindex, parent=_PARENTS[direction])
    except NetlinkError:
        return None  # no clsact qdisc (removed behind our back) or device gone
    for msg in filters:
        if msg.get_attr("TCA_KIND") != "bpf" or msg["handle"] != FILTER_HANDLE:
            continue
        if (msg["info"] >> 16) != FILTER_PRIO:
            continue
        options = msg.get_attr("TCA_OPTIONS")
        if options is not None:
            return options.get_attr("TCA_BPF_NAME")
    return None


def detach(ipr, ifindex: int, direction: str) -> bool:
    """Remove our filter from a hook; False when it was not there."""
    from pyroute2.netlink.exceptions import NetlinkError

    name = attached_name(ipr, ifindex, direction)
    if name is None or not name.startswith(NAME_PREFIX):
        return False
    try:
        ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=_PARENTS[direction],
               prio=FILTER_PRIO)
    except NetlinkError:
        return False
    return True
