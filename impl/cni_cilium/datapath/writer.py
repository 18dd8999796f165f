"""Writing an ordered list of map operations to the pinned maps (edge)."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..translate import MapOp
from .bpfsys import PinnedMap

BATCH = 4096


def write_ops(maps: Mapping[str, PinnedMap], ops: Sequence[MapOp]) -> None:
    """Apply `ops` in order; consecutive updates of one map go in one batch call.

    Batching keeps the order that matters (`diff_maps` puts every slot write before the
    frontend writes that use it) because a batch never spans two maps or kinds.
    """
    i = 0
    while i < len(ops):
        first = ops[i]
        j = i
        while (j < len(ops) and j - i < BATCH and ops[j].map == first.map
               and ops[j].is_delete == first.is_delete):
            j += 1
        target = maps[first.map]
        if first.is_delete:
            for op in ops[i:j]:
                target.delete(op.key)
        else:
            target.update_batch([(op.key, op.value) for op in ops[i:j]])
        i = j
