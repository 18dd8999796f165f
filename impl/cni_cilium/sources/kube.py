"""The Kubernetes API as the agent's source of desired state.

Pure part: `translate_object()` turns an object as the API server returns it (JSON, camelCase:
a list item or a watch event's object) into the typed objects of `cni_cilium.manifests`, or
says why it is skipped (a headless or ExternalName Service, an unscheduled or finished Pod,
an IPv6 EndpointSlice, a Node without a pod CIDR yet: normal API states, not bad input).
`ObjectStore` applies list results and watch events and bumps its revision only when the
translated desired state changed, so Node heartbeats and Pod status churn cost the agent no
reconcile.

Edge: `KubeSource` lists and watches Nodes, Pods, Services, EndpointSlices and
CiliumClusterwideNetworkPolicies with the official `kubernetes` client, one thread per
resource, relisting when a watch expires (410). A cluster without the policy CRD has no
policies: its 404 counts as an empty list (said in `errors`), the rest is served.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Tuple

from ..manifests import KubeObject, parse_documents

log = logging.getLogger("cni-cilium.sources.kube")

POLICY_KIND = "CiliumClusterwideNetworkPolicy"
KINDS = ("Node", "Pod", "Service", "EndpointSlice", POLICY_KIND)
API_VERSIONS = {"Node": "v1", "Pod": "v1", "Service": "v1",
                "EndpointSlice": "discovery.k8s.io/v1", POLICY_KIND: "cilium.io/v2"}
NAMESPACED = {"Node": False, "Pod": True, "Service": True, "EndpointSlice": True,
              POLICY_KIND: False}
# Kinds served by a CRD that may not be installed: a 404 is "none of them".
OPTIONAL_KINDS = {POLICY_KIND: ("cilium.io", "v2", "ciliumclusterwidenetworkpolicies")}
FINISHED_PHASES = ("Succeeded", "Failed")

Key = Tuple[str, str, str]


@dataclass(frozen=True)
class Translated:
    """One API object's translation: the typed object, or why it is skipped, or problems."""

    key: Key
    obj: KubeObject | None
    skipped: str | None
    problems: tuple[str, ...]
    created: str          # metadata.creationTimestamp (RFC 3339 sorts as text)


def object_key(kind: str, raw: dict[str, Any]) -> Key:
    meta = raw.get("metadata") or {}
    namespace = (meta.get("namespace") or "default") if NAMESPACED.get(kind) else ""
    return (kind, namespace, str(meta.get("name", "")))


def _ipv4(address: Any) -> bool:
    return isinstance(address, str) and address.count(".") == 3 and ":" not in address


def skip_reason(kind: str, raw: dict[str, Any]) -> str | None:
    """Why an API object carries no desired state for the datapath, or None."""
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    if kind == "Service":
        if spec.get("type") == "ExternalName":
            return "ExternalName service: DNS only, nothing to load-balance"
        ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip]
        if not ips or ips == ["None"]:
            return "headless service: no cluster IP to load-balance"
        if not any(_ipv4(ip) for ip in ips):
            return "IPv6-only service: the datapath is IPv4"
    elif kind == "Pod":
        if not spec.get("nodeName"):
            return "not scheduled to a node yet"
        if status.get("phase") in FINISHED_PHASES:
            return f"finished ({status['phase']})"
    elif kind == "EndpointSlice":
        if raw.get("addressType", "IPv4") != "IPv4":
            return f"addressType {raw.get('addressType')}: the datapath is IPv4"
    elif kind == "Node" and not spec.get("podCIDR"):
        return "no pod CIDR allocated yet"
    return None


def normalize(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The API object in the shape the manifest parser reads (a copy)."""
    doc = copy.deepcopy(raw)
    # List items carry no kind/apiVersion; watch objects do.
    doc["kind"], doc["apiVersion"] = kind, API_VERSIONS[kind]
    meta = doc.setdefault("metadata", {})
    meta.pop("managedFields", None)
    spec = doc.get("spec") or {}
    if kind == "Service":
        ipv4 = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if _ipv4(ip)]
        if ipv4:
            spec["clusterIP"] = ipv4[0]     # dual-stack: the IPv4 family's address
        if spec.get("type", "ClusterIP") == "ClusterIP":
            # Older API servers default the policy on every type; it means nothing here.
            spec.pop("externalTrafficPolicy", None)
        spec["externalIPs"] = [ip for ip in spec.get("externalIPs") or [] if _ipv4(ip)]
        ingress = ((doc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            doc["status"]["loadBalancer"]["ingress"] = [
                i for i in ingress if _ipv4((i or {}).get("ip"))]
    elif kind == "Pod":
        status = doc.get("status") or {}
        if status.get("podIP") and not _ipv4(status["podIP"]):
            ipv4 = [p.get("ip") for p in status.get("podIPs") or [] if _ipv4(p.get("ip"))]
            status["podIP"] = ipv4[0] if ipv4 else None
    elif kind == "EndpointSlice":
        # A null port means "every port", which a service frontend cannot express.
        doc["ports"] = [p for p in doc.get("ports") or [] if p.get("port") is not None]
    return doc


def translate_object(kind: str, raw: dict[str, Any]) -> Translated:
    """Translate one API object (pure)."""
    if kind not in KINDS:
        raise ValueError(f"unsupported kind {kind!r}; supported: {', '.join(KINDS)}")
    key = object_key(kind, raw)
    created = str((raw.get("metadata") or {}).get("creationTimestamp") or "")
    reason = skip_reason(kind, raw)
    if reason is not None:
        return Translated(key, None, reason, (), created)
    objects, problems = parse_documents([normalize(kind, raw)], source="api")
    return Translated(key, objects[0] if objects else None, None, tuple(problems), created)


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410 Gone): list again."""


class ObjectStore:
    """The translated desired state, fed by lists and watch events (thread-safe, pure)."""

    def __init__(self) -> None:
        self._items: dict[Key, Translated] = {}
        self._synced: set = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.revision = 0

    def _bump(self) -> None:
        self.revision += 1
        self._changed.notify_all()

    def replace(self, kind: str, raws: Iterable[dict[str, Any]]) -> bool:
        """A full LIST of one kind: it replaces what the store held of that kind."""
        fresh = {t.key: t for t in (translate_object(kind, raw) for raw in raws)}
        with self._lock:
            old = {k: v for k, v in self._items.items() if k[0] == kind}
            changed = {k: _state(v) for k, v in old.items()} != \
                {k: _state(v) for k, v in fresh.items()}
            for key in old:
                del self._items[key]
            self._items.update(fresh)
            first = kind not in self._synced
            self._synced.add(kind)
            if changed or first:
                self._bump()
            return changed

    def apply(self, event_type: str, kind: str, raw: dict[str, Any]) -> bool:
        """One watch event; True when the desired state changed."""
        if event_type == "BOOKMARK":
            return False
        if event_type == "ERROR":
            code = raw.get("code")
            if code == 410:
                raise WatchExpired(raw.get("message", "resource version too old"))
            raise RuntimeError(f"watch error {code}: {raw.get('message', raw)}")
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown watch event type {event_type!r}")
        translated = translate_object(kind, raw)
        with self._lock:
            before = self._items.get(translated.key)
            if event_type == "DELETED":
                if before is None:
                    return False
                del self._items[translated.key]
            else:
                self._items[translated.key] = translated
                if before is not None and _state(before) == _state(translated):
                    return False
            self._bump()
            return True

    def synced(self, kinds: Iterable[str] = KINDS) -> bool:
        with self._lock:
            return set(kinds) <= self._synced

    def snapshot(self) -> tuple[list[KubeObject], list[str]]:
        """Objects oldest first (creationTimestamp, then key) and every problem."""
        with self._lock:
            items = sorted(self._items.values(), key=lambda t: (t.created, t.key))
        objects = [t.obj for t in items if t.obj is not None]
        problems = [p for t in items for p in t.problems]
        return objects, problems

    def skipped(self) -> dict[str, str]:
        with self._lock:
            return {"/".join(filter(None, k)): t.skipped for k, t in sorted(self._items.items())
                    if t.skipped}

    def wait_for_change(self, revision: int, timeout: float) -> bool:
        """Block until the revision moves past `revision` (True) or timeout (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.revision != revision, timeout)


def _state(t: Translated) -> Hashable:
    return (repr(t.obj), t.skipped, t.problems, t.created)


# --- the edge: the official client ------------------------------------------------------------


def _list_functions(api_client: Any) -> dict[str, Callable[..., Any]]:
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    functions = {"Node": core.list_node, "Pod": core.list_pod_for_all_namespaces,
                 "Service": core.list_service_for_all_namespaces,
                 "EndpointSlice": discovery.list_endpoint_slice_for_all_namespaces}
    for kind, (group, version, plural) in OPTIONAL_KINDS.items():
        functions[kind] = functools.partial(custom.list_cluster_custom_object, group, version,
                                            plural)
    return functions


def load_api_client(kubeconfig: str | None = None) -> Any:
    """An API client from the pod's service account, else from a kubeconfig."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


class KubeSource:
    """Desired state from the API: list, then watch, per resource, in background threads."""

    name = "kube"

    def __init__(self, api_client: Any, *, watch_timeout: int = 300,
                 retry_seconds: float = 2.0, kinds: Iterable[str] = KINDS) -> None:
        self.api_client = api_client
        self.store = ObjectStore()
        self.watch_timeout = watch_timeout
        self.retry_seconds = retry_seconds
        self.kinds = tuple(kinds)
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._watches: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> KubeSource:
        functions = _list_functions(self.api_client)
        for kind in self.kinds:
            thread = threading.Thread(target=self._run, args=(kind, functions[kind]),
                                      name=f"kube-{kind}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wait_synced(self, timeout: float) -> bool:
        """Until every resource was listed once (the agent must not reconcile a partial view
        of the cluster and delete services that are simply not read yet)."""
        deadline = time.monotonic() + timeout
        while not self.store.synced(self.kinds):
            if self._stop.is_set() or time.monotonic() >= deadline:
                return False
            self.store.wait_for_change(self.store.revision, 0.2)
        return True

    def signature(self) -> Hashable:
        return ("kube", self.store.revision)

    quick_signature = signature      # a counter: as cheap as it gets

    def writer_active(self) -> bool:
        """The store applies each watch event whole: never mid-batch."""
        return False

    def read(self) -> tuple[list[KubeObject], list[str]]:
        return self.store.snapshot()

    def close(self) -> None:
        self._stop.set()
        for watch in list(self._watches.values()):
            watch.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def _list(self, kind: str, list_fn: Callable[..., Any]) -> str:
        import json

        response = list_fn(_preload_content=False, _request_timeout=60)
        doc = json.loads(response.data)
        self.store.replace(kind, doc.get("items") or [])
        return str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _run(self, kind: str, list_fn: Callable[..., Any]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                version = self._list(kind, list_fn)
                self.errors.pop(kind, None)
                while not self._stop.is_set():
                    stream = watch.Watch(return_type="object")   # raw dicts: no model checks
                    self._watches[kind] = stream
                    for event in stream.stream(list_fn, resource_version=version,
                                               timeout_seconds=self.watch_timeout,
                                               allow_watch_bookmarks=True):
                        raw = event.get("raw_object") or {}
                        self.store.apply(event["type"], kind, raw)
                        version = str((raw.get("metadata") or {}).get("resourceVersion")
                                      or version)
                    if self._stop.is_set():
                        return
            except WatchExpired:
                log.info("%s watch expired: listing again", kind)
                continue
            except ApiException as exc:
                if exc.status == 410:
                    continue
                if exc.status == 404 and kind in OPTIONAL_KINDS:
                    self._failed(kind, f"the {kind} CRD is not installed: none apply")
                    self.store.replace(kind, [])   # said first: waiters then see why
                else:
                    self._failed(kind, f"API error {exc.status}: {exc.reason}")
            except Exception as exc:  # the loop outlives any API failure; it retries
                self._failed(kind, f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.retry_seconds)

    def _failed(self, kind: str, message: str) -> None:
        if self.errors.get(kind) != message:
            log.warning("%s: %s (retrying every %.0f s)", kind, message, self.retry_seconds)
        self.errors[kind] = message


def snapshot_json(source: KubeSource) -> dict[str, Any]:
    """What the agent would take from the API right now, JSON-ready."""
    import dataclasses

    objects, problems = source.read()
    return {"objects": [{"kind": o.kind, **dataclasses.asdict(o)} for o in objects],
            "problems": problems, "skipped": source.store.skipped(),
            "errors": dict(source.errors)}


def main(argv: list[str] | None = None) -> int:
    """`python -m cni_cilium.sources.kube`: list the API once and print the desired state the
    agent would get from it (exit 1 when the API does not answer in time)."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m cni_cilium.sources.kube",
                                     description=main.__doc__)
    parser.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for the API")
    args = parser.parse_args(argv)
    source = KubeSource(load_api_client(args.kubeconfig), retry_seconds=1.0).start()
    try:
        synced = source.wait_synced(args.timeout)
        doc = snapshot_json(source)
    finally:
        source.close()
    print(json.dumps(doc, indent=2, sort_keys=True))
    if not synced:
        print(f"error: the API did not answer within {args.timeout:.0f} s: "
              + "; ".join(f"{k}: {v}" for k, v in sorted(doc["errors"].items())),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
