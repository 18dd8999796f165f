"""What the agent reads (no datapath): the manifest directory (the default desired-state
source), the endpoint files the CNI plugin writes, and the change signatures that tell the
loop when to reconcile.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass

import yaml

from .. import paths
from ..manifests import load_documents, parse_documents
from ..sources import DesiredStateSource


class ManifestReader:
    """Objects from directory/*.yaml; a file is parsed again only when it changed.
    The default `cni_cilium.sources.DesiredStateSource`."""

    name = "manifests"

    def __init__(self, directory: str):
        self.directory = directory
        self._cache: dict[str, tuple[tuple, list, list[str]]] = {}

    def quick_signature(self) -> tuple:
        """Changes when a file is added, removed or renamed (atomic writes do that)."""
        return file_signature(self.directory)

    def signature(self) -> tuple:
        """Changes with any file's edit too (stats every file)."""
        return dir_signature(self.directory, (".yaml", ".yml"))

    def writer_active(self) -> bool:
        """Whether a writer holds the directory's write lock (`paths.MANIFEST_WRITE_LOCK`,
        an exclusive flock; the harness's sync takes it for a batch)."""
        try:
            fd = os.open(os.path.join(self.directory, paths.MANIFEST_WRITE_LOCK), os.O_RDONLY)
        except OSError:
            return False           # no lock file: nobody writes batches here
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)            # closing drops the shared lock, if taken
        return False

    def close(self) -> None:
        """Nothing runs in the background."""

    def read(self) -> tuple[list, list[str]]:
        """Every valid object, oldest file first (on a frontend conflict the older object
        wins), and one problem line per invalid object."""
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith((".yaml", ".yml"))]
        except FileNotFoundError:
            names = []
        aged = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(self.directory, name))
                aged.append((st.st_mtime_ns, name, (st.st_mtime_ns, st.st_size, st.st_ino)))
        objects: list = []
        problems: list[str] = []
        cache = {}
        for _mtime, name, signature in sorted(aged):
            hit = self._cache.get(name)
            if hit is None or hit[0] != signature:
                hit = (signature, *self._parse(name))
            cache[name] = hit
            objects.extend(hit[1])
            problems.extend(hit[2])
        self._cache = cache
        return objects, problems

    def _parse(self, name: str) -> tuple[list, list[str]]:
        try:
            with open(os.path.join(self.directory, name), encoding="utf-8") as fh:
                docs = load_documents(fh.read())
        except (OSError, yaml.YAMLError) as exc:
            return [], [f"{name}: cannot read: {exc}".replace("\n", " ")]
        found, bad = parse_documents(docs, name)
        return found, [f"{name}: {line}" for line in bad]


def dir_signature(directory: str, suffixes: tuple[str, ...]) -> tuple:
    """(name, mtime, size) of every file with one of `suffixes` (stats every file)."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return ()
    with entries:
        out = []
        for entry in entries:
            if entry.name.endswith(suffixes):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


def file_signature(path: str) -> tuple:
    """(mtime, size) of a file or directory; () when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return (st.st_mtime_ns, st.st_size)


def inputs_signature(config_path: str, source: DesiredStateSource) -> tuple:
    """Changes whenever anything the agent reads changes (the config, the desired state,
    the endpoint files)."""
    return (file_signature(config_path), source.signature(),
            dir_signature(paths.ENDPOINT_DIR, (".json",)))


def quick_signature(config_path: str, source: DesiredStateSource) -> tuple:
    """Changes whenever a file is added, removed or renamed (atomic writes do that)."""
    return (file_signature(config_path), source.quick_signature(),
            file_signature(paths.ENDPOINT_DIR))


@dataclass
class EndpointRecord:
    """A pod's endpoint as the CNI plugin recorded it, and whether its programs run."""

    container_id: str
    device: str
    ip: str
    pod: str
    ready: bool = False
    error: str = ""

    def to_dict(self) -> dict:
        return {"containerID": self.container_id, "device": self.device, "ip": self.ip,
                "pod": self.pod, "ready": self.ready, "error": self.error}


def endpoint_ids() -> list[str]:
    """Container ids of the endpoint files present, sorted."""
    try:
        names = os.listdir(paths.ENDPOINT_DIR)
    except FileNotFoundError:
        return []
    return sorted(n[:-len(".json")] for n in names if n.endswith(".json"))


def read_endpoint(container_id: str) -> EndpointRecord:
    """The endpoint file of a container; OSError, ValueError or KeyError when unreadable."""
    with open(os.path.join(paths.ENDPOINT_DIR, f"{container_id}.json"), encoding="utf-8") as fh:
        doc = json.load(fh)
    return EndpointRecord(container_id, doc["ifname"], doc.get("ip", ""),
                          f"{doc.get('podNamespace', '')}/{doc.get('podName', '')}")


def mark_endpoint_ready(container_id: str, at: float) -> None:
    """Tell the CNI plugin (waiting in ADD) that the endpoint's programs are attached."""
    with open(os.path.join(paths.ENDPOINT_DIR, f"{container_id}.ready"), "w",
              encoding="ascii") as fh:
        fh.write(f"{at}\n")
