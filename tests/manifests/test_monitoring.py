"""Rules for k8s/monitoring/: the PodMonitor, the PrometheusRule, the
NetworkPolicy that lets Prometheus in, and the Grafana dashboard.

Run by scripts/validate-manifests, or: python3 -m pytest tests/manifests
(That every metric they name is exported by a running node is checked by
tests/cluster/http_endpoints.rs; that their PromQL parses, by promtool.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manifests as m  # noqa: E402
from test_manifests import NAMESPACE  # noqa: E402

# What etcd's mixin alerts on, by raftset's alert names.
ALERTS = {
    "RaftsetNoLeader",
    "RaftsetHighNumberOfLeaderChanges",
    "RaftsetHighNumberOfFailedProposals",
    "RaftsetHighFsyncDurations",
    "RaftsetDiskNearlyFull",
}


@pytest.fixture(scope="module")
def monitoring() -> list[dict]:
    return m.monitoring_docs()


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return m.render(m.K8S)


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_template(base):
    return one(base, "StatefulSet")["spec"]["template"]


def container_ports(base) -> dict[str, int]:
    (container,) = pod_template(base)["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_the_deployment_does_not_include_monitoring(base, monitoring):
    kinds = {d["kind"] for d in base}
    assert not kinds & {"PodMonitor", "PrometheusRule"}, "CRDs would fail without the operator"
    assert {d["kind"] for d in monitoring} == {
        "PodMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "ConfigMap",
    }
    for doc in monitoring:
        assert doc["metadata"].get("namespace") == NAMESPACE, m.key(doc)


def test_every_yaml_file_is_used_by_the_monitoring_kustomization():
    k = m.load_docs(m.kustomization_file(m.MONITORING))[0]
    listed = {(m.MONITORING / r).resolve() for r in k["resources"]}
    for path in m.MONITORING.glob("*.yaml"):
        if path.name not in m.KUSTOMIZATION_NAMES:
            assert path.resolve() in listed, f"{path.name} is not in k8s/monitoring's kustomization"


def test_pod_monitor_scrapes_the_pods_http_port(base, monitoring):
    pod_monitor = one(monitoring, "PodMonitor")["spec"]
    labels = pod_template(base)["metadata"]["labels"]
    for k, v in pod_monitor["selector"]["matchLabels"].items():
        assert labels.get(k) == v, f"the selector's {k}={v} does not select the pods"
    assert pod_monitor["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = pod_monitor["podMetricsEndpoints"]
    assert endpoint["port"] in container_ports(base), "the port names a container port"
    assert endpoint["path"] == "/metrics"


def test_network_policy_lets_prometheus_reach_only_the_http_port(base, monitoring):
    policy = one(monitoring, "NetworkPolicy")["spec"]
    labels = pod_template(base)["metadata"]["labels"]
    for k, v in policy["podSelector"]["matchLabels"].items():
        assert labels.get(k) == v
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [container_ports(base)["http"]]
    assert all("namespaceSelector" in source for source in rule["from"])


def test_rules_have_the_etcd_alerts_with_severity_and_text(monitoring):
    rules = [r for g in one(monitoring, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert ALERTS <= names, f"missing: {ALERTS - names}"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" in rule, f"{rule['alert']} fires on a single bad scrape"


def test_dashboard_is_grafana_json_with_a_query_in_every_panel(monitoring):
    config_map = one(monitoring, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = m.dashboard_json(monitoring)
    assert dashboard["uid"] == "raftset"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "raftset_" in target["expr"], panel["title"]
