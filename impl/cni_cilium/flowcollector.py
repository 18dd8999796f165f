"""The agent's flow collector: drains the datapath's flow ring buffer into the recent-flows
buffer the API serves (edge: a thread over `datapath.ringbuf`).

The programs never wait for it (lib/flow.h): when the agent is slow or down, the ring fills
and further events are counted as lost; a restarted agent reads on from the pinned ring.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Tuple

from . import pacing
from .bpfabi import FlowEvent
from .datapath.ringbuf import RingBuffer
from .policy.flows import FlowBuffer, describe

log = logging.getLogger("cni-cilium.flows")

POLL_SECONDS = 0.1
# What decoding needs from the translation in effect: identities, names, rules.
Context = Tuple[Mapping[int, Any], Mapping[str, str], Mapping[int, str]]


class FlowCollector:
    def __init__(self, ring_path: str, context: Callable[[], Context], node: str,
                 buffer: FlowBuffer):
        self.ring = RingBuffer(ring_path)
        self.context = context
        self.node = node
        self.buffer = buffer
        self.errors = 0
        self.poll_seconds = pacing.paced(POLL_SECONDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow-collector", daemon=True)

    def start(self) -> FlowCollector:
        self._thread.start()
        return self

    def drain(self) -> int:
        """Move every complete record into the buffer; how many were moved."""
        identities, names, rules = self.context()
        offset = time.time() - time.monotonic()
        flows = []
        for record in self.ring.drain():
            try:
                event = FlowEvent.decode(record)
            except Exception:       # a short or foreign record: skip it, count it
                self.errors += 1
                continue
            flows.append(describe(event, offset, identities, names, rules, self.node))
        self.buffer.add(flows)
        return len(flows)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain()
            except Exception:
                self.errors += 1
                log.exception("flow collector: draining the ring buffer failed")
            self._stop.wait(self.poll_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.ring.close()
