"""The harness as API server: stores desired state and hands it to every node as files.

`ApiServer` keeps one YAML file per object under the cluster's state dir (`objects/`),
validates with `cni_cilium.manifests` (an invalid object is refused with a line naming the
object and field; every valid one is kept), fills allocations (`controller.py`), keeps
the Pod objects of the pods `pod run` made, derives EndpointSlices, and writes one file per
object into every node's /etc/cni-cilium/manifests/ (`NodeFiles`), where the agent reads
them. The kind provider can replace `NodeFiles` with the Kubernetes API; nothing else here
depends on how the files reach the nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

from cni_cilium.manifests import Pod, Service, dump_document, load_documents, parse_documents
from cni_cilium.paths import MANIFEST_WRITE_LOCK

from ..state import cluster_lock, write_atomic
from .controller import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NOT_APPLIED,
    Key,
    allocate_service,
    describe,
    doc_key,
    endpoint_slices,
    manifest_filename,
    used_by,
)

NODE_MANIFEST_DIR = "/etc/cni-cilium/manifests"   # cni_cilium.paths.MANIFEST_DIR on a node

# Runs on each node (any provider) with the wanted files as JSON on stdin: writes what
# differs atomically, removes the harness's files that are no longer wanted, and leaves
# files it does not own (00-*.yaml from the configure role) alone. An index of what it
# wrote (digest, size, mtime) spares reading the unchanged files again: with 20,000
# objects that read was most of a sync; a file edited since (size or mtime moved) is read.
# The batch holds the directory's write lock, so the agent reads it once, whole, instead of
# reconciling half-written states while competing with the writes (twice as slow).
SYNC_SCRIPT = r"""
import fcntl, hashlib, json, os, sys
d = sys.argv[1]
want = json.load(sys.stdin)
os.makedirs(d, exist_ok=True)
lock = os.open(os.path.join(d, "{LOCK}"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(lock, fcntl.LOCK_EX)
index_path = os.path.join(d, ".harness-index.json")
try:
    with open(index_path, encoding="utf-8") as fh:
        index = json.load(fh)
except (OSError, ValueError):
    index = {}
written, changed = {}, []
for name, text in sorted(want.items()):
    path = os.path.join(d, name)
    digest = hashlib.sha1(text.encode()).hexdigest()
    try:
        st = os.stat(path)
        known = index.get(name)
        if known and known[1:] == [st.st_size, st.st_mtime_ns]:
            same = known[0] == digest
        else:
            with open(path, encoding="utf-8") as fh:
                same = fh.read() == text
    except FileNotFoundError:
        same = False
    if not same:
        tmp = os.path.join(d, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
        changed.append(name)
        st = os.stat(path)
    written[name] = [digest, st.st_size, st.st_mtime_ns]
for name in sorted(os.listdir(d)):
    if name.endswith(".yaml") and name[:1].isalpha() and name not in want:
        os.unlink(os.path.join(d, name))
        changed.append(name)
with open(index_path + ".tmp", "w", encoding="utf-8") as fh:
    json.dump(written, fh)
os.replace(index_path + ".tmp", index_path)
os.close(lock)
print(json.dumps(changed))
""".replace("{LOCK}", MANIFEST_WRITE_LOCK)


class Distributor(Protocol):
    def sync(self, files: dict[str, str], nodes: Sequence[str] | None = None) -> dict[str, dict]:
        """Make every node's manifest dir hold exactly `files`; per-node result."""


class NodeFiles:
    """Distribution through a provider's `exec` (ssh, nsenter, ...), nodes in parallel."""

    def __init__(self, provider: Any):
        self.provider = provider

    def _sync_one(self, node: str, payload: str) -> dict:
        try:
            res = self.provider.exec(node, ["python3", "-c", SYNC_SCRIPT, NODE_MANIFEST_DIR],
                                     input=payload, timeout=60)
            return {"changed": json.loads(res.stdout or "[]")}
        except subprocess.CalledProcessError as exc:
            return {"error": (exc.stderr or str(exc)).strip().splitlines()[-1:]}
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
            return {"error": str(exc)}

    def sync(self, files: dict[str, str], nodes: Sequence[str] | None = None) -> dict[str, dict]:
        names = list(nodes) if nodes else [n.name for n in self.provider.nodes()]
        payload = json.dumps(files)
        with ThreadPoolExecutor(max_workers=min(8, len(names) or 1)) as pool:
            results = list(pool.map(lambda n: self._sync_one(n, payload), names))
        return dict(zip(names, results))


@dataclass
class ApplyReport:
    applied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    nodes: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _flatten(docs: Iterable[Any]) -> list[Any]:
    out = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(
                doc.get("items"), list):
            out.extend(_flatten(doc["items"]))
        elif doc is not None:
            out.append(doc)
    return out


def _normalise(doc: dict, key: Key) -> dict:
    out = dict(doc)
    meta = dict(out.get("metadata") or {})
    if key[1]:
        meta["namespace"] = key[1]
    out["metadata"] = meta
    return out


class ApiServer:
    """Desired state of one cluster (see the module docstring)."""

    def __init__(self, state_dir: str, cluster: str, distributor: Distributor | None = None):
        self.state_dir = state_dir
        self.cluster = cluster
        self.object_dir = os.path.join(state_dir, "objects")
        self.distributor = distributor

    @classmethod
    def for_provider(cls, provider: Any) -> ApiServer:
        return cls(provider.state_dir, provider.cluster, NodeFiles(provider))

    # ------------------------------------------------------------ store

    def _path(self, key: Key) -> str:
        return os.path.join(self.object_dir, manifest_filename(key))

    def objects(self) -> dict[Key, dict]:
        """Every stored object (applied ones and Pods), by key."""
        out: dict[Key, dict] = {}
        if not os.path.isdir(self.object_dir):
            return out
        for name in sorted(os.listdir(self.object_dir)):
            if not name.endswith(".yaml"):
                continue
            with open(os.path.join(self.object_dir, name), encoding="utf-8") as fh:
                docs = load_documents(fh.read())
            doc = docs[0] if docs else None
            key = doc_key(doc)
            if key:
                out[key] = doc
        return out

    def _store(self, key: Key, doc: dict) -> None:
        write_atomic(self._path(key), dump_document(doc))

    def _unstore(self, key: Key) -> bool:
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------ changes

    def apply(self, docs: Iterable[Any], source: str = "<input>") -> ApplyReport:
        """Validate and store objects; invalid ones are refused one by one."""
        report = ApplyReport()
        with cluster_lock(self.cluster):
            stored = self.objects()
            fresh: dict[Key, Any] = {}        # what this call parsed: desired_files reuses it
            used = used_by(d for k, d in stored.items() if k[0] == "Service")
            for index, doc in enumerate(_flatten(docs)):
                key = doc_key(doc)
                if key is None:
                    problems = parse_documents([doc], source)[1]
                    report.problems.extend(problems or [
                        f"{source} document {index}: kind and metadata.name are required"])
                    continue
                if key[0] in NOT_APPLIED:
                    report.problems.append(f"{describe(key)}: kind: {NOT_APPLIED[key[0]]}")
                    continue
                candidate = _normalise(doc, key)
                problems: list[str] = []
                previous = stored.get(key)
                if key[0] == "Service":
                    if previous is not None:
                        used.remove(previous)       # what the other Services hold
                    candidate, problems = allocate_service(candidate, previous, used)
                parsed, invalid = parse_documents([candidate], source)
                problems += invalid
                kept = previous if problems else candidate
                if key[0] == "Service" and kept is not None:
                    used.add(kept)
                if problems:
                    report.problems.extend(problems)
                    continue
                if previous == candidate:
                    report.unchanged.append(describe(key))
                    continue
                stored[key] = candidate
                if len(parsed) == 1:
                    fresh[key] = parsed[0]
                self._store(key, candidate)
                report.applied.append(describe(key))
            if report.applied:
                report.nodes = self.sync(stored=stored, parsed=fresh)
        return report

    def delete(self, docs: Iterable[Any], source: str = "<input>") -> ApplyReport:
        """Remove objects by kind, namespace and name."""
        report = ApplyReport()
        with cluster_lock(self.cluster):
            for index, doc in enumerate(_flatten(docs)):
                key = doc_key(doc)
                if key is None:
                    report.problems.append(
                        f"{source} document {index}: kind and metadata.name are required")
                elif key[0] in NOT_APPLIED:
                    report.problems.append(f"{describe(key)}: kind: {NOT_APPLIED[key[0]]}")
                elif self._unstore(key):
                    report.deleted.append(describe(key))
                else:
                    report.not_found.append(describe(key))
            if report.deleted:
                report.nodes = self.sync()
        return report

    def put_pod(self, doc: dict, sync: bool = True) -> dict[str, dict]:
        """Store a Pod object (from the pod runtime) and redistribute."""
        key = doc_key(doc)
        problems = parse_documents([doc], "pod")[1]
        if key is None or key[0] != "Pod" or problems:
            raise ValueError("; ".join(problems) or "not a Pod")
        with cluster_lock(self.cluster):
            self._store(key, doc)
            return self.sync() if sync else {}

    def remove_pod(self, namespace: str, name: str) -> dict[str, dict]:
        with cluster_lock(self.cluster):
            self._unstore(("Pod", namespace, name))
            return self.sync()

    # ------------------------------------------------------------ what nodes get

    def desired_files(self, stored: dict[Key, dict] | None = None,
                      parsed: Mapping[Key, Any] | None = None) -> dict[str, str]:
        """Every object plus the derived EndpointSlices, one text per file name (`stored`:
        the store's objects when the caller has them already; `parsed`: objects of it the
        caller parsed already, by key)."""
        if stored is None:
            stored = self.objects()
        known = parsed or {}
        # Only Services with a selector and Pods feed the endpoint controller; the store's
        # objects were validated when they were applied.
        feeding = [k for k, d in stored.items() if k[0] == "Pod" or (
            k[0] == "Service" and isinstance(d.get("spec"), dict) and d["spec"].get("selector"))]
        parsed_now, _problems = parse_documents([stored[k] for k in feeding if k not in known],
                                                "store")
        feeders = [*parsed_now, *(known[k] for k in feeding if k in known)]
        services = [o for o in feeders if isinstance(o, Service)]
        pods = [o for o in feeders if isinstance(o, Pod)]
        docs = {k: d for k, d in stored.items()
                if not (k[0] == "EndpointSlice" and
                        (d.get("metadata", {}).get("labels") or {}).get(MANAGED_BY_LABEL)
                        == MANAGED_BY)}
        for slice_doc in endpoint_slices(services, pods):
            docs[doc_key(slice_doc)] = slice_doc
        return {manifest_filename(k): dump_document(d) for k, d in sorted(docs.items())}

    def sync(self, nodes: Sequence[str] | None = None, stored: dict[Key, dict] | None = None,
             parsed: Mapping[Key, Any] | None = None) -> dict[str, dict]:
        """Hand the desired files to the nodes (all, or the ones named)."""
        if self.distributor is None:
            return {}
        return self.distributor.sync(self.desired_files(stored, parsed), nodes)
