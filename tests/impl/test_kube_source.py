"""The Kubernetes API source: translation of recorded API objects, the store, the watch loop.

The fixtures in fixtures/kube/ are list responses and a watch stream in the shapes the API
server returns (list items without kind/apiVersion, managedFields, dual-stack fields,
heartbeats, bookmarks, a 410 Expired error event).
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from cni_cilium.manifests import EndpointSlice, Node, Pod, Service
from cni_cilium.sources.kube import (
    KINDS,
    KubeSource,
    ObjectStore,
    WatchExpired,
    translate_object,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "kube")
FILES = {"Node": "nodes.json", "Pod": "pods.json", "Service": "services.json",
         "EndpointSlice": "endpointslices.json"}
PATHS = {"/api/v1/nodes": "Node", "/api/v1/pods": "Pod", "/api/v1/services": "Service",
         "/apis/discovery.k8s.io/v1/endpointslices": "EndpointSlice"}


def recorded(kind: str) -> dict:
    with open(os.path.join(FIXTURES, FILES[kind]), encoding="utf-8") as fh:
        return json.load(fh)


def item(kind: str, name: str) -> dict:
    return next(i for i in recorded(kind)["items"] if i["metadata"]["name"] == name)


def events() -> list[dict]:
    with open(os.path.join(FIXTURES, "watch-events.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_kubeconfig(path, server: str):
    """A kubeconfig for an API server without authentication (the fake one below)."""
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    return path


def loaded_store() -> ObjectStore:
    store = ObjectStore()
    for kind in KINDS:
        store.replace(kind, recorded(kind)["items"])
    return store


# --- translation (pure) ---------------------------------------------------------------------


@pytest.mark.unit
def test_node_list_items_become_nodes():
    node = translate_object("Node", item("Node", "cni-cilium-worker")).obj
    assert node == Node("cni-cilium-worker", "172.18.0.3", "10.100.1.0/24",
                        {"beta.kubernetes.io/arch": "amd64", "kubernetes.io/arch": "amd64",
                         "kubernetes.io/hostname": "cni-cilium-worker",
                         "kubernetes.io/os": "linux"})
    waiting = translate_object("Node", item("Node", "cni-cilium-worker2"))
    assert waiting.obj is None and waiting.skipped == "no pod CIDR allocated yet"
    assert waiting.problems == ()


@pytest.mark.unit
def test_services_of_every_type():
    web = translate_object("Service", item("Service", "web")).obj
    assert isinstance(web, Service)
    assert (web.type, web.cluster_ip, web.ports[0].target_port) == ("ClusterIP", "10.96.12.34",
                                                                     "http")
    np = translate_object("Service", item("Service", "web-np")).obj
    assert (np.external_traffic_policy, np.health_check_node_port, np.ports[0].node_port) == (
        "Local", 32100, 30080)
    lb = translate_object("Service", item("Service", "web-lb")).obj
    assert lb.load_balancer_ips == ("10.97.0.10",)
    assert [(p.protocol, p.port, p.node_port) for p in lb.ports] == [("TCP", 80, 30081),
                                                                      ("UDP", 53, 30082)]
    assert lb.source_ranges == ("192.0.2.0/24",) and lb.lb_algorithm == "maglev"
    # Dual-stack with IPv6 first: the IPv4 family's cluster IP is the one served.
    assert translate_object("Service", item("Service", "dual")).obj.cluster_ip == "10.96.40.1"


@pytest.mark.unit
@pytest.mark.parametrize("kind, name, reason", [
    ("Service", "db-headless", "headless service"),
    ("Service", "external-db", "ExternalName"),
    ("Service", "v6only", "IPv6-only"),
    ("Pod", "pending-1", "not scheduled"),
    ("Pod", "job-done-1", "finished (Succeeded)"),
    ("EndpointSlice", "dual-v6", "addressType IPv6"),
])
def test_normal_api_states_are_skipped_not_reported_as_problems(kind, name, reason):
    result = translate_object(kind, item(kind, name))
    assert result.obj is None and result.problems == ()
    assert reason in result.skipped


@pytest.mark.unit
def test_pods_and_endpoint_slices():
    pod = translate_object("Pod", item("Pod", "web-7d4b9c-abcde")).obj
    assert pod == Pod("default", "web-7d4b9c-abcde", "cni-cilium-worker", "10.100.1.17",
                      {"app": "web", "pod-template-hash": "7d4b9c"}, False, pod.ports)
    assert pod.ports[0].container_port == 8080
    host = translate_object("Pod", item("Pod", "hostnet-agent-x1")).obj
    assert host.host_network and host.ports[0].host_port == 9090
    # IPv6 first in podIP: the IPv4 address from podIPs is the pod's.
    assert translate_object("Pod", item("Pod", "dual-1")).obj.pod_ip == "10.100.1.40"
    web = translate_object("EndpointSlice", item("EndpointSlice", "web-x7k2p")).obj
    assert isinstance(web, EndpointSlice) and web.service_name == "web"
    ready, leaving = web.endpoints
    assert (ready.addresses, ready.ready, ready.node_name, ready.target_pod) == (
        ("10.100.1.17",), True, "cni-cilium-worker", "default/web-7d4b9c-abcde")
    assert (leaving.ready, leaving.serving, leaving.terminating) == (False, True, True)
    empty = translate_object("EndpointSlice", item("EndpointSlice", "web-np-empty")).obj
    assert empty.endpoints == () and empty.ports == ()


@pytest.mark.unit
def test_an_invalid_object_is_a_problem_naming_it():
    result = translate_object("Service", item("Service", "broken"))
    assert result.obj is None
    assert result.problems == ("Service default/broken: spec.ports[0].protocol: unsupported "
                               "protocol 'SCTP'; allowed: TCP, UDP",)
    with pytest.raises(ValueError, match="unsupported kind 'Ingress'"):
        translate_object("Ingress", {})


@pytest.mark.unit
def test_translation_does_not_touch_the_api_object():
    raw = item("Service", "dual")
    before = json.dumps(raw, sort_keys=True)
    translate_object("Service", raw)
    assert json.dumps(raw, sort_keys=True) == before


# --- the store (pure) -------------------------------------------------------------------------


@pytest.mark.unit
def test_snapshot_is_oldest_first_with_every_problem():
    store = loaded_store()
    objects, problems = store.snapshot()
    names = [(o.kind, o.name) for o in objects]
    assert names[0] == ("Node", "cni-cilium-control-plane")
    assert names.index(("Service", "kubernetes")) < names.index(("Service", "web"))
    assert len([o for o in objects if o.kind == "Service"]) == 5
    assert problems == ["Service default/broken: spec.ports[0].protocol: unsupported protocol "
                        "'SCTP'; allowed: TCP, UDP"]
    assert store.synced()
    assert store.skipped()["Service/default/db-headless"].startswith("headless")


@pytest.mark.unit
def test_watch_events_change_the_state_only_when_the_desired_state_changes():
    store = loaded_store()
    revision = store.revision
    heartbeat, cidr, port_change, bookmark, deleted, expired = events()
    # A Node heartbeat changes nothing the datapath uses: no new revision, no reconcile.
    assert store.apply(heartbeat["type"], "Node", heartbeat["object"]) is False
    assert store.revision == revision
    # worker2 got its pod CIDR: it becomes a Node.
    assert store.apply(cidr["type"], "Node", cidr["object"]) is True
    assert any(o.kind == "Node" and o.name == "cni-cilium-worker2" and
               o.pod_cidr == "10.100.2.0/24" for o in store.snapshot()[0])
    assert store.apply(port_change["type"], "Service", port_change["object"]) is True
    web = next(o for o in store.snapshot()[0] if o.kind == "Service" and o.name == "web")
    assert web.ports[0].port == 8000
    assert store.apply(bookmark["type"], "Service", bookmark["object"]) is False
    assert store.apply(deleted["type"], "Service", deleted["object"]) is True
    assert not any(o.kind == "Service" and o.name == "web" for o in store.snapshot()[0])
    assert store.apply(deleted["type"], "Service", deleted["object"]) is False
    assert store.revision == revision + 3
    with pytest.raises(WatchExpired, match="too old resource version"):
        store.apply(expired["type"], "Service", expired["object"])


@pytest.mark.unit
def test_a_relist_replaces_one_kind_and_reports_whether_it_changed():
    store = loaded_store()
    services = recorded("Service")["items"]
    assert store.replace("Service", services) is False
    assert store.replace("Service", [s for s in services if s["metadata"]["name"] != "web"])
    remaining = {o.name for o in store.snapshot()[0] if o.kind == "Service"}
    assert "web" not in remaining and "web-lb" in remaining
    assert any(o.kind == "Node" for o in store.snapshot()[0])     # other kinds untouched


# --- the edge: the official client against an API server on the loopback ----------------------


class FakeApiServer:
    """Serves the recorded lists and watch streams on 127.0.0.1, like the API server's
    list and watch endpoints, and records what was asked."""

    def __init__(self, watch_events: dict[str, list[list[dict]]]):
        self.watch_events = watch_events          # kind -> one event list per watch call
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                kind = PATHS.get(url.path)
                with server.lock:
                    server.requests.append((url.path, query))
                if kind is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if query.get("watch") not in ("true", "True", "1"):
                    self.wfile.write(json.dumps(recorded(kind)).encode())
                    return
                with server.lock:
                    batches = server.watch_events.get(kind, [])
                    batch = batches.pop(0) if batches else None
                if batch is None:          # nothing more: hold the watch a moment, then end
                    time.sleep(0.3)
                    return
                for event in batch:
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def lists(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, q in self.requests if p == path and "watch" not in q)


@pytest.mark.unit
def test_kube_source_lists_watches_and_relists_after_410():
    from kubernetes import client

    heartbeat, cidr, port_change, bookmark, _deleted, expired = events()
    watch_events = {"Node": [[heartbeat, cidr], [expired]],
                    "Service": [[port_change, bookmark]]}
    with FakeApiServer(watch_events) as server:
        cfg = client.Configuration()
        cfg.host = server.url
        source = KubeSource(client.ApiClient(cfg), watch_timeout=5, retry_seconds=0.1)
        try:
            source.start()
            assert source.wait_synced(timeout=20), source.errors
            deadline = time.monotonic() + 20

            def service_watched():
                objects = source.read()[0]
                web = [o for o in objects if o.kind == "Service" and o.name == "web"]
                return bool(web and web[0].ports[0].port == 8000)

            def relisted():
                # The second Node watch answered 410 Expired: the source listed Nodes again,
                # and that list (worker2 without a pod CIDR) replaced what the watch said.
                return (server.lists("/api/v1/nodes") >= 2 and
                        source.store.skipped().get("Node/cni-cilium-worker2") ==
                        "no pod CIDR allocated yet")

            while not (service_watched() and relisted()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service_watched(), (source.errors, source.read())
            assert relisted(), (server.requests, source.store.skipped())
            watches = [q for p, q in server.requests if p == "/api/v1/services" and "watch" in q]
            assert watches[0]["resourceVersion"] == "1400"     # from the list's metadata
            assert watches[0].get("allowWatchBookmarks") in ("true", "True")
            signature = source.signature()
            assert signature == source.signature()
        finally:
            source.close()
    assert source.errors == {}


@pytest.mark.unit
def test_kube_source_reports_an_unreachable_api_and_keeps_retrying():
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"        # discard port: nothing listens
    source = KubeSource(client.ApiClient(cfg), retry_seconds=0.1, kinds=("Node",))
    try:
        source.start()
        assert source.wait_synced(timeout=1.0) is False
        assert "Node" in source.errors
    finally:
        source.close()


@pytest.mark.unit
def test_fixtures_have_the_api_schema():
    """The recorded objects pass the Kubernetes client's models: no invented field or type."""
    from cni_harness.providers.kind import model_problems

    models = {"Node": "V1Node", "Pod": "V1Pod", "Service": "V1Service",
              "EndpointSlice": "V1EndpointSlice"}
    problems: list[str] = []
    for kind, model in models.items():
        doc = recorded(kind)
        model_problems(doc, f"{model}List", kind, problems)
    for event in events():
        obj = event["object"]
        model = "V1Status" if obj["kind"] == "Status" else models[obj["kind"]]
        model_problems(obj, model, f"event {event['type']}", problems)
    assert problems == []


@pytest.mark.unit
def test_module_cli_prints_what_the_agent_would_get(tmp_path):
    """`python -m cni_cilium.sources.kube --kubeconfig`: the real client, a real kubeconfig."""
    import subprocess
    import sys


    with FakeApiServer({}) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        result = subprocess.run([sys.executable, "-m", "cni_cilium.sources.kube",
                                 "--kubeconfig", str(kubeconfig), "--timeout", "20"],
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    kinds = [o["kind"] for o in doc["objects"]]
    assert kinds.count("Node") == 2 and kinds.count("Service") == 5
    assert doc["skipped"]["Pod/default/pending-1"] == "not scheduled to a node yet"
    assert doc["problems"] == ["Service default/broken: spec.ports[0].protocol: unsupported "
                               "protocol 'SCTP'; allowed: TCP, UDP"]


# --- the agent takes either source -------------------------------------------------------------


@pytest.mark.unit
def test_the_agent_reconciles_on_the_kube_sources_changes(tmp_path):
    """The agent's change detection follows the source it was given (no datapath needed)."""
    from cni_cilium.agent.inputs import ManifestReader
    from cni_cilium.agent.reconcile import Agent
    from cni_cilium.config import defaults

    source = KubeSource(api_client=None)          # fed by hand: no threads started
    agent = Agent(defaults(), str(tmp_path / "config.yaml"), "cni-cilium-worker",
                  source=source)
    assert agent.source is source
    before, quick = agent._inputs_signature(), agent._quick_signature()
    source.store.replace("Service", recorded("Service")["items"])
    assert agent._inputs_signature() != before and agent._quick_signature() != quick
    objects, problems = agent.source.read()
    assert {o.name for o in objects} >= {"web", "web-lb"} and len(problems) == 1
    # Default: the manifest directory, as before.
    plain = Agent(defaults(), str(tmp_path / "config.yaml"), "n1")
    assert isinstance(plain.source, ManifestReader) and plain.source.name == "manifests"


@pytest.mark.unit
def test_the_agent_opens_the_api_source_only_once_it_listed_everything(tmp_path, monkeypatch):

    from cni_cilium.agent import main as agent

    with FakeApiServer({}) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        source = agent._open_source("kube", str(kubeconfig))
        try:
            assert source is not None and source.store.synced()
            assert any(o.kind == "EndpointSlice" for o in source.read()[0])
        finally:
            source.close()
    # Nothing answers: the agent refuses to start, naming the reason, instead of
    # reconciling an empty view (which would remove every service).
    monkeypatch.setattr(agent, "KUBE_SYNC_SECONDS", 1)
    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")
    assert agent._open_source("kube", str(kubeconfig)) is None
