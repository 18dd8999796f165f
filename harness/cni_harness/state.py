"""Where a cluster's state lives, its lock, and the crash-safe journal of what it created.

The journal is written *before* each thing is created (one fsync'd JSON line per intent),
so `cluster down` after a `kill -9` in the middle of `up` knows exactly what that run may
have made, and removes only that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Iterator

DEFAULT_STATE_ROOT = "/var/lib/cni-harness/clusters"
STATE_ENV = "CNI_HARNESS_STATE_DIR"


def state_root() -> str:
    """The directory holding one sub-directory per cluster (env CNI_HARNESS_STATE_DIR)."""
    return os.environ.get(STATE_ENV) or DEFAULT_STATE_ROOT


def cluster_dir(name: str) -> str:
    return os.path.join(state_root(), name)


def write_atomic(path: str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace a file so readers see the old or the new content, never a mix."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    raw = data.encode() if isinstance(data, str) else data
    with open(tmp, "wb") as fh:
        fh.write(raw)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_json(path: str, default=None):
    """A JSON file's content, or `default` when it does not exist or is torn."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


_held: dict[str, int] = {}   # lock path -> nesting depth in this process


@contextlib.contextmanager
def cluster_lock(name: str) -> Iterator[None]:
    """Serialise changes to one cluster across processes (the lock file lives beside its
    state dir). Re-entrant within a process: a pod run inside a reboot does not deadlock."""
    root = state_root()
    path = os.path.join(root, f".{name}.lock")
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    os.makedirs(root, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held[path] = 1
        yield
    finally:
        _held.pop(path, None)
        os.close(fd)


class Journal:
    """Append-only record of intents: `record()` returns only once the line is on disk."""

    def __init__(self, path: str):
        self.path = path

    def record(self, op: str, **fields) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        line = json.dumps({"op": op, **fields}, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def entries(self) -> list[dict]:
        """Every complete entry, oldest first (a line torn by a crash is ignored)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "op" in entry:
                out.append(entry)
        return out

    def exists(self) -> bool:
        return os.path.exists(self.path)
