"""Security identities: numbers for label sets and CIDRs, agreed by every node without a
shared allocator (pure).

A label identity is a stable hash of its sorted labels into 256-65535 (Cilium's range for
cluster identities); a CIDR identity a hash of the prefix into (1 << 24) + 0-65535 (Cilium's
node-local scope). Every node hashes the same inputs to the same numbers. Two sets landing
on one number are a collision: the set that sorts first keeps it, the next takes the next
free number, and a warning names both (nodes that momentarily see different objects may
then number the second set differently, which changes only what flows display: each node
programs identities and verdicts from one computation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from .model import RESERVED_IDENTITIES

LABEL_RANGE = (256, 65535)
CIDR_RANGE = (1 << 24, (1 << 24) + 65535)
KIND_RESERVED, KIND_ENDPOINT, KIND_CIDR = "reserved", "endpoint", "cidr"


@dataclass(frozen=True)
class Identity:
    number: int
    kind: str                     # reserved, endpoint, cidr
    labels: tuple[str, ...]       # "k8s:app=web", "reserved:host", "cidr:10.0.0.0/8"

    def selector_labels(self) -> dict[str, str]:
        """What label selectors see: pods' labels without their source; reserved labels
        keep theirs (`reserved:host`), so only a selector naming them matches them."""
        out = {}
        for label in self.labels:
            source, _, rest = label.partition(":")
            key, _, value = rest.partition("=")
            out[key if source == "k8s" else f"{source}:{key}"] = value
        return out

    def has(self, label: str) -> bool:
        return label in self.labels

    def to_dict(self) -> dict:
        return {"identity": self.number, "kind": self.kind, "labels": list(self.labels)}


def _hash(text: str, lo: int, hi: int) -> int:
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return lo + digest % (hi - lo + 1)


def allocate(keys: Iterable[str], number_range: tuple[int, int]
             ) -> tuple[dict[str, int], list[str]]:
    """A number per distinct key (hash, then the next free one on a collision) and one
    warning per collision."""
    lo, hi = number_range
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    warnings = []
    for key in sorted(set(keys)):
        number = first = _hash(key, lo, hi)
        while number in taken:
            number = lo if number == hi else number + 1
            if number == first:
                raise ValueError(f"identity range {lo}-{hi} is full")
        if number != first:
            warnings.append(f"identity collision: {key!r} hashes to {first}, which "
                            f"{taken[first]!r} holds; it gets {number}")
        taken[number] = key
        out[key] = number
    return out, warnings


def reserved(number: int, *extra: str) -> Identity:
    """A reserved identity with its own label and any extra ones (e.g. the host that also
    runs the API server carries reserved:kube-apiserver)."""
    labels = (f"reserved:{RESERVED_IDENTITIES[number]}", *extra)
    return Identity(number, KIND_RESERVED, tuple(dict.fromkeys(labels)))
