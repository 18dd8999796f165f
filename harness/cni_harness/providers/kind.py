"""The `kind` provider: a kind cluster with no CNI and no kube-proxy, cni-cilium as a DaemonSet.

Pure first: the kind cluster config (`cluster_config`) and the agent's manifests
(`agent_manifests`), each with a validator that catches a wrong field the way kind and the
API server would (`config_problems`: kind's v1alpha4 Cluster schema, strict like kind's own
decoder; `manifest_problems`: the official Kubernetes client's models, which are generated
from the API's OpenAPI schema). The edge runs `kind`, `docker` and `kubectl` by subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from .. import PROJECT_ROOT
from .base import (
    Availability,
    NodeInfo,
    Provider,
    ProviderUnavailable,
    put_file_script,
    run_text,
)

DEFAULT_CLUSTER = "cni-cilium"
DEFAULT_IMAGE = "cni-cilium-agent:dev"
AGENT_NAMESPACE = "kube-system"
AGENT_NAME = "cni-cilium-agent"
POD_SUBNET = "10.100.0.0/16"        # docs/architecture.md: the cluster pod CIDR
SERVICE_SUBNET = "10.96.0.0/16"     # docs/architecture.md: the ClusterIP range
DOCKERFILE = os.path.join(PROJECT_ROOT, "deploy", "agent.Dockerfile")
DEFAULT_WORKDIR = os.path.join(PROJECT_ROOT, ".state", "kind")
KIND_API_VERSION = "kind.x-k8s.io/v1alpha4"

# --- kind's cluster config -------------------------------------------------------------------

_STR = {"type": "string"}
_PATCH_JSON6902 = {
    "type": "object", "additionalProperties": False,
    "required": ["group", "version", "kind", "patch"],
    "properties": {"group": _STR, "version": _STR, "kind": _STR, "patch": _STR},
}
_MOUNT = {
    "type": "object", "additionalProperties": False,
    "properties": {"containerPath": _STR, "hostPath": _STR, "readOnly": {"type": "boolean"},
                   "selinuxRelabel": {"type": "boolean"},
                   "propagation": {"enum": ["None", "HostToContainer", "Bidirectional"]}},
}
_PORT_MAPPING = {
    "type": "object", "additionalProperties": False,
    "properties": {"containerPort": {"type": "integer"}, "hostPort": {"type": "integer"},
                   "listenAddress": _STR, "protocol": {"enum": ["TCP", "UDP", "SCTP"]}},
}
# kind's v1alpha4 Cluster (sigs.k8s.io/kind/pkg/apis/config/v1alpha4), which kind decodes
# strictly: an unknown field is an error there, so it is one here.
KIND_CLUSTER_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False,
    "required": ["kind", "apiVersion"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": KIND_API_VERSION},
        "name": _STR,
        "nodes": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "role": {"enum": ["control-plane", "worker"]},
                "image": _STR,
                "labels": {"type": "object", "additionalProperties": _STR},
                "extraMounts": {"type": "array", "items": _MOUNT},
                "extraPortMappings": {"type": "array", "items": _PORT_MAPPING},
                "gpus": _STR,
                "kubeadmConfigPatches": {"type": "array", "items": _STR},
                "kubeadmConfigPatchesJSON6902": {"type": "array", "items": _PATCH_JSON6902},
            }}},
        "networking": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "ipFamily": {"enum": ["ipv4", "ipv6", "dual"]},
                "apiServerPort": {"type": "integer"},
                "apiServerAddress": _STR,
                "podSubnet": _STR,
                "serviceSubnet": _STR,
                "disableDefaultCNI": {"type": "boolean"},
                "kubeProxyMode": {"enum": ["iptables", "ipvs", "nftables", "none"]},
                "dnsSearch": {"type": "array", "items": _STR},
            }},
        "featureGates": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "runtimeConfig": {"type": "object", "additionalProperties": _STR},
        "kubeadmConfigPatches": {"type": "array", "items": _STR},
        "kubeadmConfigPatchesJSON6902": {"type": "array", "items": _PATCH_JSON6902},
        "containerdConfigPatches": {"type": "array", "items": _STR},
        "containerdConfigPatchesJSON6902": {"type": "array", "items": _STR},
    },
}


def cluster_config(name: str = DEFAULT_CLUSTER, nodes: int = 3,
                   node_image: str | None = None) -> dict[str, Any]:
    """kind's cluster config: node1 control plane + workers, no default CNI, no kube-proxy."""
    if not 1 <= nodes <= 10:
        raise ValueError(f"node count {nodes} is out of range; allowed: 1-10")
    members: list[dict[str, Any]] = []
    for i in range(nodes):
        node: dict[str, Any] = {"role": "control-plane" if i == 0 else "worker",
                                # bcc compiles against the host kernel's headers
                                "extraMounts": [
                                    {"hostPath": "/lib/modules", "containerPath": "/lib/modules",
                                     "readOnly": True},
                                    {"hostPath": "/usr/src", "containerPath": "/usr/src",
                                     "readOnly": True}]}
        if node_image:
            node["image"] = node_image
        members.append(node)
    return {
        "kind": "Cluster",
        "apiVersion": KIND_API_VERSION,
        "name": name,
        "networking": {"disableDefaultCNI": True, "kubeProxyMode": "none",
                       "podSubnet": POD_SUBNET, "serviceSubnet": SERVICE_SUBNET},
        "nodes": members,
    }


def config_problems(doc: Any) -> list[str]:
    """Schema faults of a kind cluster config, plus what cni-cilium needs of it."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(KIND_CLUSTER_SCHEMA)
    problems = [f"{'.'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
                for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path))]
    if problems:
        return problems
    net = doc.get("networking", {})
    if net.get("disableDefaultCNI") is not True:
        problems.append("networking.disableDefaultCNI: must be true (cni-cilium is the CNI)")
    if net.get("kubeProxyMode") != "none":
        problems.append("networking.kubeProxyMode: must be none (cni-cilium replaces it)")
    return problems


# --- the agent's manifests ----------------------------------------------------------------------

def _host_path(name: str, path: str, kind: str = "DirectoryOrCreate") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def agent_manifests(image: str = DEFAULT_IMAGE, namespace: str = AGENT_NAMESPACE,
                    module_config: str | None = None) -> list[dict[str, Any]]:
    """RBAC, the module config and the privileged hostNetwork DaemonSet of the agent."""
    labels = {"app.kubernetes.io/name": AGENT_NAME}
    config = module_config or yaml.safe_dump({
        "apiVersion": "deckhouse.io/v1alpha1", "kind": "ModuleConfig",
        "metadata": {"name": "cni-cilium"}, "spec": {"version": 1, "settings": {}}})
    env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    mounts = [
        {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"},
        {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
        {"name": "usr-src", "mountPath": "/usr/src", "readOnly": True},
        {"name": "run", "mountPath": "/run/cni-cilium"},
        {"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "HostToContainer"},
        {"name": "cni-conf", "mountPath": "/etc/cni/net.d"},
        {"name": "config", "mountPath": "/etc/cni-cilium/config.yaml", "subPath": "config.yaml",
         "readOnly": True},
        {"name": "ipam", "mountPath": "/var/lib/cni-cilium"},
        {"name": "log", "mountPath": "/var/log/cni-cilium"},
    ]
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": AGENT_NAME, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": AGENT_NAME,
                    "hostNetwork": True,
                    "hostPID": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "priorityClassName": "system-node-critical",
                    # The nodes are NotReady until this very pod brings pod networking up.
                    "tolerations": [{"operator": "Exists"}],
                    "initContainers": [{
                        "name": "install-cni",
                        "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["/opt/cni-cilium/venv/bin/python", "-m",
                                    "cni_cilium.kubenode"],
                        "args": ["install-cni", "--node", "$(NODE_NAME)",
                                 "--bin-dir", "/host/opt/cni/bin",
                                 "--conf-dir", "/host/etc/cni/net.d"],
                        "env": env,
                        "volumeMounts": [{"name": "cni-bin", "mountPath": "/host/opt/cni/bin"},
                                         {"name": "cni-conf",
                                          "mountPath": "/host/etc/cni/net.d"}],
                    }],
                    "containers": [{
                        "name": "agent",
                        "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["/opt/cni-cilium/venv/bin/cni-cilium"],
                        # Logs to stderr: `kubectl logs` shows them.
                        "args": ["agent", "--source", "kube", "--node-name", "$(NODE_NAME)",
                                 "--log-file", "-"],
                        "env": env,
                        "securityContext": {"privileged": True},
                        "readinessProbe": {
                            "exec": {"command": ["/opt/cni-cilium/venv/bin/cni-cilium",
                                                 "status", "--json"]},
                            "periodSeconds": 10, "timeoutSeconds": 5},
                        "volumeMounts": mounts,
                    }],
                    "volumes": [
                        _host_path("bpffs", "/sys/fs/bpf"),
                        _host_path("lib-modules", "/lib/modules", "Directory"),
                        _host_path("usr-src", "/usr/src", "Directory"),
                        _host_path("run", "/run/cni-cilium"),
                        _host_path("netns", "/var/run/netns"),
                        _host_path("cni-bin", "/opt/cni/bin"),
                        _host_path("cni-conf", "/etc/cni/net.d"),
                        _host_path("ipam", "/var/lib/cni-cilium"),
                        _host_path("log", "/var/log/cni-cilium"),
                        {"name": "config", "configMap": {"name": AGENT_NAME}},
                    ],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": AGENT_NAME, "namespace": namespace, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": AGENT_NAME, "labels": labels},
         "rules": [
             {"apiGroups": [""], "resources": ["nodes", "pods", "services"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["cilium.io"], "resources": ["ciliumclusterwidenetworkpolicies"],
              "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": AGENT_NAME, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": AGENT_NAME},
         "subjects": [{"kind": "ServiceAccount", "name": AGENT_NAME, "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": AGENT_NAME, "namespace": namespace, "labels": labels},
         "data": {"config.yaml": config}},
        daemonset,
    ]


# The Python client's model of each (apiVersion, kind) this project writes.
MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("v1", "Pod"): "V1Pod",
    ("v1", "Namespace"): "V1Namespace",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
}
_PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
               "datetime": (str,), "date": (str,), "object": (object,)}


def model_problems(value: Any, type_name: str, path: str, problems: list[str]) -> None:
    """Walk a document against the client's generated models: unknown fields, wrong types."""
    from kubernetes import client

    if value is None:       # JSON null = unset (the API itself sends e.g. "endpoints": null)
        return
    # The generator spells containers list[X] / dict(str, X) or List[X] / Dict[str, X].
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            model_problems(item, type_name[5:-1], f"{path}[{i}]", problems)
        return
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        inner = type_name[5:-1].split(",", 1)[1].strip()
        for key, item in value.items():
            model_problems(item, inner, f"{path}.{key}", problems)
        return
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(value, bool):
            ok = False
        if not ok:
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__} "
                            f"{value!r}")
        return
    model = getattr(client.models, type_name)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {type_name} mapping, got {type(value).__name__}")
        return
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            known = ", ".join(sorted(by_json))
            problems.append(f"{path}.{key}: unknown field of {type_name}; known: {known}")
            continue
        model_problems(item, model.openapi_types[by_json[key]], f"{path}.{key}", problems)


def manifest_problems(docs: Sequence[Any]) -> list[str]:
    """Validate manifests against the Kubernetes API's schema as the Python client models it:
    unknown fields, wrong types, and missing required fields (the models' own checks)."""
    from kubernetes import client

    problems: list[str] = []
    api = client.ApiClient()
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            problems.append(f"document {i}: expected a mapping")
            continue
        label = f"{doc.get('kind', '?')} {doc.get('metadata', {}).get('name', '?')}"
        model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
        if model is None:
            problems.append(f"{label}: no schema for apiVersion {doc.get('apiVersion')!r} "
                            f"kind {doc.get('kind')!r}")
            continue
        found: list[str] = []
        model_problems(doc, model, label, found)
        if not found:
            try:   # the generated constructors reject a missing required field
                api._ApiClient__deserialize(doc, model)
            except (ValueError, TypeError) as exc:
                found.append(f"{label}: " + " ".join(str(exc).split()))
        problems.extend(found)
    return problems


# --- the host ---------------------------------------------------------------------------------


def _run(argv: Sequence[str], timeout: float = 60, **kwargs: Any
         ) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False, **kwargs)


def check_host() -> Availability:
    """What this host lacks to run a kind cluster (no side effects)."""
    missing = []
    if shutil.which("kind") is None:
        missing.append("kind (not on PATH; https://kind.sigs.k8s.io release binary or "
                       "`go install sigs.k8s.io/kind`)")
    if shutil.which("kubectl") is None:
        missing.append("kubectl (not on PATH)")
    if shutil.which("docker") is None:
        missing.append("docker (the docker CLI is not on PATH)")
    else:
        try:
            info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
        except subprocess.TimeoutExpired:
            info = None
        if info is None or info.returncode != 0 or not info.stdout.strip():
            reason = (info.stderr.strip().splitlines() or ["no answer"])[-1] if info else \
                "no answer in 20 s"
            missing.append(f"a running docker engine ({reason})")
    return Availability(not missing, tuple(missing))


# --- the provider ------------------------------------------------------------------------------


@dataclass
class KindProvider(Provider):
    """A kind cluster; the agent is deployed as a DaemonSet built from this project."""

    cluster: str = DEFAULT_CLUSTER
    node_count: int = 3
    image: str = DEFAULT_IMAGE
    workdir: str = DEFAULT_WORKDIR
    _kubeconfig: str = field(default="", repr=False)

    name = "kind"

    @classmethod
    def availability(cls) -> Availability:
        return check_host()

    @property
    def directory(self) -> str:
        return os.path.join(self.workdir, self.cluster)

    @property
    def kubeconfig(self) -> str:
        return os.path.join(self.directory, "kubeconfig")

    def _require(self) -> None:
        available = check_host()
        if not available.ok:
            raise ProviderUnavailable(available.reason())

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess:
        """kubectl against this cluster (the suites' way in)."""
        return subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=input,
                              capture_output=True, text=True, timeout=timeout, check=check)

    def up(self) -> None:
        self._require()
        os.makedirs(self.directory, exist_ok=True)
        config_path = os.path.join(self.directory, "kind-config.yaml")
        config = cluster_config(self.cluster, self.node_count)
        problems = config_problems(config)
        if problems:
            raise ValueError("; ".join(problems))
        with open(config_path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
        clusters = _run(["kind", "get", "clusters"]).stdout.split()
        if self.cluster not in clusters:
            subprocess.run(["kind", "create", "cluster", "--name", self.cluster, "--config",
                            config_path, "--kubeconfig", self.kubeconfig], check=True,
                           timeout=900)
        else:
            with open(self.kubeconfig, "w", encoding="utf-8") as fh:
                fh.write(_run(["kind", "get", "kubeconfig", "--name", self.cluster]).stdout)
        subprocess.run(["docker", "build", "-t", self.image, "-f", DOCKERFILE, PROJECT_ROOT],
                       check=True, timeout=1800)
        subprocess.run(["kind", "load", "docker-image", self.image, "--name", self.cluster],
                       check=True, timeout=600)
        docs = agent_manifests(self.image)
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        self.kubectl("-n", AGENT_NAMESPACE, "rollout", "status", f"daemonset/{AGENT_NAME}",
                     "--timeout=600s", timeout=660)
        self.kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=300s",
                     timeout=360)

    def down(self) -> None:
        if shutil.which("kind") is None:
            return
        if self.cluster in _run(["kind", "get", "clusters"]).stdout.split():
            subprocess.run(["kind", "delete", "cluster", "--name", self.cluster], check=True,
                           timeout=300)

    def nodes(self) -> list[NodeInfo]:
        doc = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)
        return nodes_from_api(doc)

    def _container(self, node: str) -> str:
        self.node(node)    # KeyError naming the nodes for an unknown one
        return node        # kind names each node's container after the node

    def exec(self, node: str, argv: Sequence[str], *, input: str | bytes | None = None,
             timeout: float | None = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run_text(["docker", "exec", "-i", self._container(node), *argv], input,
                        timeout, check)

    def put_file(self, node: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self.exec(node, ["sh", "-c", put_file_script(path, mode)], input=data)

    def reboot(self, node: str) -> None:
        """Restart the node's container (its bpffs and netns go, like a reboot's) and wait
        until the node is Ready again."""
        subprocess.run(["docker", "restart", self._container(node)], check=True, timeout=300)
        self.kubectl("wait", "--for=condition=Ready", f"node/{node}", "--timeout=300s",
                     timeout=360)

    def inventory_path(self) -> str:
        """Nodes reached through `docker exec` (community.docker's connection plugin)."""
        path = os.path.join(self.directory, "inventory.yml")
        hosts = {n.name: {"ansible_connection": "community.docker.docker",
                          "ansible_host": n.name, "cni_node_ip": n.ip,
                          "cni_pod_cidr": n.pod_cidr, "cni_node_labels": n.labels}
                 for n in self.nodes()}
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump({"all": {"hosts": hosts, "vars": {"cni_provider": "kind"}}}, fh)
        return path

    def status(self) -> dict:
        state = "absent"
        if shutil.which("kind") is not None and self.cluster in _run(
                ["kind", "get", "clusters"]).stdout.split():
            state = "running"
        nodes = [n.to_dict() for n in self.nodes()] if state == "running" else []
        return {"provider": self.name, "cluster": self.cluster, "state": state,
                "nodes": nodes}


def nodes_from_api(node_list: dict[str, Any]) -> list[NodeInfo]:
    """NodeInfo from `kubectl get nodes -o json`, control plane first."""
    out = []
    for item in node_list.get("items", []):
        meta, spec, status = item["metadata"], item.get("spec", {}), item.get("status", {})
        ip = next((a["address"] for a in status.get("addresses", [])
                   if a.get("type") == "InternalIP"), "")
        out.append(NodeInfo(meta["name"], ip, spec.get("podCIDR", ""),
                            dict(meta.get("labels", {}))))
    return sorted(out, key=lambda n: (not n.is_control_plane, n.name))

