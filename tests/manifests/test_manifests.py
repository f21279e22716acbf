"""The project's rules for its Kubernetes manifests (k8s/), from
shared/LESSONS.md ("Kubernetes") and what manifest scanners flag.

Run by scripts/validate-manifests, or: python3 -m pytest tests/manifests
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manifests as m  # noqa: E402

NAMESPACE = "raftset"
# Exactly the settings `raftset serve` reads in a pod. A renamed or added
# variable must be changed here on purpose (and in the binary: see
# test_env_names_are_declared_by_the_source).
EXPECTED_ENV = {
    "RAFTSET_NAME",
    "RAFTSET_DATA_DIR",
    "RAFTSET_LISTEN_API",
    "RAFTSET_LISTEN_PEER",
    "RAFTSET_LISTEN_HTTP",
    "RAFTSET_NAMESPACE",
    "RAFTSET_PEER_SERVICE",
    "RAFTSET_CLUSTER_DOMAIN",
    "RAFTSET_LOG_JSON",
    "RAFTSET_FOLLOW_REPLICAS",
    "RAFTSET_PEER_TLS_DIR",
    "RAFTSET_LISTEN_PROBES",
    "RAFTSET_CLIENT_TOKENS_FILE",
    "RAFTSET_TOKEN_FILE",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "PersistentVolume", "PriorityClass", "CustomResourceDefinition"}
DATA_DIR = "/var/lib/raftset"


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return m.render(m.K8S)


@pytest.fixture(scope="module")
def parallel() -> list[dict]:
    return m.render(m.K8S / "overlays" / "parallel")


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs):
    return one(docs, "StatefulSet", "raftset")["spec"]["template"]["spec"]


def containers(docs):
    spec = pod_spec(docs)
    return spec.get("initContainers", []) + spec["containers"]


def main_container(docs):
    return one(docs, "StatefulSet", "raftset")["spec"]["template"]["spec"]["containers"][0]


def quantity(value) -> float:
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value}"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


# --- files and rendering -----------------------------------------------------


def test_every_yaml_file_is_used_by_a_kustomization():
    resources, patches = m.referenced_files()
    for path in m.yaml_files():
        if path.name in m.KUSTOMIZATION_NAMES:
            continue
        assert path.resolve() in resources | patches, (
            f"{path.relative_to(m.REPO)} is not listed in any kustomization: "
            "`kubectl apply -k` would never apply it"
        )


def test_kustomization_renders_every_base_file(base):
    from_files = {
        m.key(d) for p in m.resource_files() if m.COMPONENTS not in p.parents
        for d in m.load_docs(p)
    }
    assert {m.key(d) for d in base} == from_files


def test_parallel_overlay_only_changes_pod_management_policy(base, parallel):
    sts = one(parallel, "StatefulSet", "raftset")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert one(base, "StatefulSet", "raftset")["spec"]["podManagementPolicy"] == "OrderedReady"
    for doc in parallel:
        original = next(d for d in base if m.key(d) == m.key(doc))
        if doc["kind"] == "StatefulSet":
            doc = {**doc, "spec": {**doc["spec"], "podManagementPolicy": "OrderedReady"}}
        assert doc == original, f"the overlay changes {m.key(doc)} beyond podManagementPolicy"


# --- namespaces and labels ---------------------------------------------------


def test_every_namespaced_object_names_the_namespace(base):
    assert one(base, "Namespace")["metadata"]["name"] == NAMESPACE
    for path in m.resource_files():
        for doc in m.load_docs(path):
            if doc["kind"] not in CLUSTER_SCOPED:
                assert doc["metadata"].get("namespace") == NAMESPACE, (
                    f"{path.relative_to(m.REPO)}: {doc['kind']}/{doc['metadata']['name']} "
                    f"has no `namespace: {NAMESPACE}`"
                )


def test_selectors_select_the_pods(base):
    sts = one(base, "StatefulSet", "raftset")
    labels = sts["spec"]["template"]["metadata"]["labels"]

    def selects(selector):
        return selector and all(labels.get(k) == v for k, v in selector.items())

    assert selects(sts["spec"]["selector"]["matchLabels"])
    for svc in (d for d in base if d["kind"] == "Service"):
        assert selects(svc["spec"]["selector"]), f"Service {svc['metadata']['name']}"
    assert selects(one(base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(one(base, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])


# --- Services ------------------------------------------------------------------


def test_publish_not_ready_addresses_on_the_headless_service_only(base):
    sts = one(base, "StatefulSet", "raftset")
    services = [d for d in base if d["kind"] == "Service"]
    headless = one(services, "Service", sts["spec"]["serviceName"])
    assert headless["metadata"]["name"] == "raftset-peers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"].get("publishNotReadyAddresses") is True
    others = [s for s in services if s is not headless]
    assert others, "no client Service"
    for svc in others:
        assert svc["spec"].get("publishNotReadyAddresses") is not True, (
            f"Service {svc['metadata']['name']} would send clients to unready pods"
        )


def test_service_ports_name_container_ports(base):
    names = {p["name"]: p["containerPort"] for p in main_container(base)["ports"]}
    assert names == {"grpc": 7000, "peer": 7001, "http": 8080, "probes": 8081}
    client = one(base, "Service", "raftset")
    assert {p["name"]: p["port"] for p in client["spec"]["ports"]} == {"grpc": 7000, "http": 8080}
    peers = one(base, "Service", "raftset-peers")
    assert any(p["port"] == 7001 for p in peers["spec"]["ports"])
    for svc in (client, peers):
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names or port["targetPort"] in names.values()


# --- StatefulSet ---------------------------------------------------------------


def test_statefulset_shape(base):
    sts = one(base, "StatefulSet", "raftset")
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "raftset-peers"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Retain", "whenDeleted": "Retain"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    pod = spec["template"]["spec"]
    # The token is needed for the calls rbac.yaml lists.
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "raftset"
    assert pod["terminationGracePeriodSeconds"] >= 20, "too short for a leader handover"
    mounts = {v["mountPath"]: v["name"] for v in main_container(base)["volumeMounts"]}
    assert mounts[DATA_DIR] == "data"
    tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in tmp


def test_pod_anti_affinity_by_hostname(base):
    terms = pod_spec(base)["affinity"]["podAntiAffinity"]
    preferred = [t["podAffinityTerm"] for t in terms.get(
        "preferredDuringSchedulingIgnoredDuringExecution", [])]
    required = terms.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in preferred + required)


def test_image_is_pinned(base):
    for c in containers(base):
        image = c["image"]
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag, f"{image} has no tag"
        assert tag != "latest", f"{image} uses latest"
        assert c.get("imagePullPolicy") == "IfNotPresent"
    assert main_container(base)["image"] == "raftset:0.1.0"


def test_probes_exist_differ_and_name_real_ports(base):
    for c in containers(base):
        port_names = {p["name"] for p in c.get("ports", [])}
        port_numbers = {p["containerPort"] for p in c.get("ports", [])}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert kind in c, f"container {c['name']} has no {kind}"
            port = c[kind]["httpGet"]["port"]
            assert port in port_names or port in port_numbers, (
                f"{c['name']} {kind} uses port {port!r}, not one of its ports")
        assert c["livenessProbe"] != c["readinessProbe"]
        # Liveness must never depend on a leader; readiness must.
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz?noleader"
        assert c["startupProbe"]["httpGet"]["path"] != "/readyz"


def test_every_container_has_requests_and_limits(base):
    for c in containers(base):
        resources = c.get("resources", {})
        for resource in ("cpu", "memory", "ephemeral-storage"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request is not None, f"{c['name']}: no {resource} request"
            assert limit is not None, f"{c['name']}: no {resource} limit"
            assert quantity(request) <= quantity(limit), f"{c['name']}: {resource} request > limit"


def test_security_context(base):
    pod = pod_spec(base)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001 and pod["runAsGroup"] == 10001
    assert pod["fsGroup"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    for c in containers(base):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["capabilities"].get("add")
        assert sc.get("privileged") is not True
        assert sc["runAsNonRoot"] is True
        assert sc.get("runAsUser", pod["runAsUser"]) >= 10000
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"


def test_env_names_are_exactly_the_documented_ones(base):
    env = main_container(base)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    assert set(names) == EXPECTED_ENV, (
        f"unexpected: {sorted(set(names) - EXPECTED_ENV)}, "
        f"missing: {sorted(EXPECTED_ENV - set(names))}")


def test_env_values_agree_with_the_rest_of_the_manifests(base):
    env = {e["name"]: e for e in main_container(base)["env"]}
    assert env["RAFTSET_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["RAFTSET_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RAFTSET_PEER_SERVICE"]["value"] == one(base, "StatefulSet")["spec"]["serviceName"]
    assert env["RAFTSET_CLUSTER_DOMAIN"]["value"] == "cluster.local"
    assert env["RAFTSET_DATA_DIR"]["value"] == DATA_DIR
    ports = {p["name"]: p["containerPort"] for p in main_container(base)["ports"]}
    for var, port in (("RAFTSET_LISTEN_API", "grpc"), ("RAFTSET_LISTEN_PEER", "peer"),
                      ("RAFTSET_LISTEN_HTTP", "http"), ("RAFTSET_LISTEN_PROBES", "probes")):
        assert env[var]["value"] == f"0.0.0.0:{ports[port]}"
    assert env["RAFTSET_LOG_JSON"]["value"] in ("true", "false")
    assert env["RAFTSET_FOLLOW_REPLICAS"]["value"] == "true"


def test_the_peer_port_speaks_mutual_tls_from_the_secret_raftset_certs_makes(base):
    env = {e["name"]: e for e in main_container(base)["env"]}
    assert "RAFTSET_INSECURE_PEERS" not in env
    tls_dir = env["RAFTSET_PEER_TLS_DIR"]["value"]
    pod = one(base, "StatefulSet")["spec"]["template"]["spec"]
    mounts = {v["mountPath"]: v for v in main_container(base)["volumeMounts"]}
    assert mounts[tls_dir].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[tls_dir]["name"])
    # `raftset certs` names its Secret so by default.
    assert volume["secret"]["secretName"] == "raftset-peer-tls"
    # Keys readable by the pod's group only.
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_the_cert_manager_extra_makes_the_secret_the_pods_mount_for_every_pod(base):
    """k8s/extras/cert-manager is not schema-validated (no CRDs here): it
    must at least parse and name what the StatefulSet needs."""
    extra = m.K8S / "extras" / "cert-manager"
    assert "Not validated here" in (extra / "README.md").read_text(encoding="utf-8")
    docs = [d for d in yaml.safe_load_all((extra / "peer-tls.yaml").read_text(encoding="utf-8")) if d]
    certs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    peer = certs["raftset-peer-tls"]["spec"]
    pod = one(base, "StatefulSet")["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert peer["secretName"] in mounted
    assert {"server auth", "client auth"} <= set(peer["usages"])
    replicas = one(base, "StatefulSet")["spec"]["replicas"]
    for i in range(replicas):
        assert f"raftset-{i}.raftset-peers.{NAMESPACE}.svc.cluster.local" in peer["dnsNames"]
        assert f"raftset-{i}" in peer["dnsNames"]
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    assert peer["issuerRef"]["name"] in issuers
    assert certs["raftset-peer-ca"]["spec"]["isCA"] is True


def test_the_client_port_requires_tokens_from_the_secret_raftset_tokens_makes(base):
    env = {e["name"]: e["value"] for e in main_container(base)["env"] if "value" in e}
    tokens, admin = env["RAFTSET_CLIENT_TOKENS_FILE"], env["RAFTSET_TOKEN_FILE"]
    directory = tokens.rsplit("/", 1)[0]
    assert admin.rsplit("/", 1)[0] == directory
    pod = one(base, "StatefulSet")["spec"]["template"]["spec"]
    mounts = {v["mountPath"]: v for v in main_container(base)["volumeMounts"]}
    assert mounts[directory].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[directory]["name"])
    # `raftset tokens` names its Secret so by default; the pods get the
    # hashes and the admin token (for kubectl exec), not the applications'.
    assert volume["secret"]["secretName"] == "raftset-client-tokens"
    assert sorted(i["path"] for i in volume["secret"]["items"]) == sorted(
        p.rsplit("/", 1)[1] for p in (tokens, admin))
    assert volume["secret"]["defaultMode"] == 0o440


def test_the_service_account_may_read_its_statefulset_and_keep_only_the_founding_record(base):
    rules = one(base, "Role", "raftset")["rules"]
    assert rules == [
        {"apiGroups": ["apps"], "resources": ["statefulsets"],
         "resourceNames": ["raftset"], "verbs": ["get"]},
        # RBAC cannot restrict create by name.
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["raftset-cluster"], "verbs": ["get", "update", "patch", "delete"]},
    ]
    binding = one(base, "RoleBinding", "raftset")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "raftset", "namespace": "raftset"}]


def test_env_names_are_declared_by_the_source(base):
    """A flag renamed in src/ without the manifest following fails here."""
    src = m.REPO / "src"
    if not src.is_dir():
        pytest.skip("no src/ next to k8s/")
    declared = set()
    for path in src.rglob("*.rs"):
        declared |= set(re.findall(r'env\s*=\s*"(RAFTSET_[A-Z0-9_]+)"', path.read_text()))
    used = {e["name"] for e in main_container(base)["env"]}
    assert used <= declared, f"not read by raftset (src/): {sorted(used - declared)}"


# --- PodDisruptionBudget and NetworkPolicy -----------------------------------


def test_pdb(base):
    spec = one(base, "PodDisruptionBudget", "raftset")["spec"]
    assert spec["maxUnavailable"] == 1
    assert "minAvailable" not in spec
    assert spec["unhealthyPodEvictionPolicy"] in ("IfHealthyBudget", "AlwaysAllow")


def test_network_policy(base):
    policy = one(base, "NetworkPolicy", "raftset")["spec"]
    assert "Ingress" in policy["policyTypes"]
    raftset_pods = one(base, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    opened = set()
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        opened |= ports
        if 7001 in ports or "peer" in ports:
            # Only raftset pods may reach the peer port.
            for peer in rule["from"]:
                selector = peer.get("podSelector", {}).get("matchLabels", {})
                assert set(peer) == {"podSelector"}, "peer port open beyond this namespace"
                assert selector and all(raftset_pods.get(k) == v for k, v in selector.items()), (
                    "peer port open to pods other than raftset's")
    # The probe port is the kubelet's, which a NetworkPolicy never blocks.
    container_ports = {p["containerPort"] for p in main_container(base)["ports"]
                       if p["name"] != "probes"}
    assert container_ports <= opened, f"ports unreachable: {container_ports - opened}"


def test_egress_is_dns_the_sets_own_pods_and_the_api_server(base):
    policy = one(base, "NetworkPolicy", "raftset")["spec"]
    assert "Egress" in policy["policyTypes"]
    raftset_pods = one(base, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    allowed = []
    for rule in policy["egress"]:
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        to = rule.get("to")
        if to is None:
            # Anywhere, but only DNS and the API server's ports.
            assert ports <= {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)}, ports
        else:
            for peer in to:
                selector = peer.get("podSelector", {}).get("matchLabels", {})
                assert set(peer) == {"podSelector"}, f"egress beyond this namespace: {peer}"
                assert selector and all(raftset_pods.get(k) == v for k, v in selector.items())
        allowed.append(ports)
    everything = set().union(*allowed)
    assert {("UDP", 53), ("TCP", 53)} <= everything, "no DNS"
    assert ("TCP", 7001) in everything, "no peer traffic"
    assert ("TCP", 443) in everything, "no API server"


def test_every_probe_asks_the_probe_port(base):
    container = main_container(base)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "probes", probe
