"""Rules for k8s/components/ and the overlays that use them: each component
does what its kustomization says, and every combination an overlay may use
keeps the rules the base keeps (test_manifests.py).

Run by scripts/validate-manifests, or: python3 -m pytest tests/manifests
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manifests as m  # noqa: E402
from test_manifests import CLUSTER_SCOPED, EXPECTED_ENV, NAMESPACE, one, quantity  # noqa: E402

COMBINATIONS = m.combinations()
# Settings a component may add to EXPECTED_ENV, each read by `raftset serve`.
COMPONENT_ENV = {"RAFTSET_CACHE_MB", "RAFTSET_QUOTA_BYTES", "RAFTSET_REMOTE_ADMIN"}


@pytest.fixture(scope="module")
def renders() -> dict[tuple[str, ...], list[dict]]:
    return {c: m.render_components(c) for c in COMBINATIONS}


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return m.render_components(())


@pytest.fixture(scope="module")
def production() -> list[dict]:
    return m.render_components(("production",))


@pytest.fixture(scope="module")
def small() -> list[dict]:
    return m.render_components(("small",))


def sts(docs):
    return one(docs, "StatefulSet", "raftset")


def pod_templates(docs) -> list[tuple[str, dict]]:
    """Every pod template: the StatefulSet's, and any other workload's."""
    out = []
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment", "Job", "DaemonSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]))
        elif d["kind"] == "CronJob":
            out.append((f"CronJob/{d['metadata']['name']}",
                        d["spec"]["jobTemplate"]["spec"]["template"]))
    return out


def containers_of(template) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def labels_selected(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def evictions_allowed(pdb: dict, replicas: int) -> int:
    """How many healthy pods the budget lets a drain evict at once, as the
    disruption controller computes it (percentages round up)."""
    spec = pdb["spec"]

    def absolute(value) -> int:
        if isinstance(value, str) and value.endswith("%"):
            return math.ceil(replicas * int(value[:-1]) / 100)
        return int(value)

    if "maxUnavailable" in spec:
        return absolute(spec["maxUnavailable"])
    return replicas - absolute(spec["minAvailable"])


# --- the matrix ----------------------------------------------------------------


def test_every_component_directory_is_a_component():
    for directory in m.COMPONENTS.iterdir():
        assert m.kustomization_file(directory), f"{directory.name} has no kustomization.yaml"
        assert m.is_component(directory), f"{directory.name}: kind is not Component"
    assert set(m.PROFILES) <= set(m.component_names())


def test_every_overlay_uses_existing_components_and_one_profile_at_most():
    for overlay in (m.K8S / "overlays").iterdir():
        k = m.load_docs(m.kustomization_file(overlay))[0]
        used = [(overlay / c).resolve() for c in k.get("components", [])]
        for path in used:
            assert path.parent == m.COMPONENTS.resolve(), f"{overlay.name}: {path}"
        profiles = [p.name for p in used if p.name in m.PROFILES]
        assert len(profiles) <= 1, f"{overlay.name} combines profiles {profiles}"


def test_the_example_overlays_use_the_components():
    for overlay, component in (("production", "production"), ("small", "small")):
        k = m.load_docs(m.kustomization_file(m.K8S / "overlays" / overlay))[0]
        assert f"../../components/{component}" in k["components"], overlay


@pytest.mark.parametrize("combo", COMBINATIONS, ids=m.combination_label)
def test_every_combination_keeps_the_base_rules(renders, combo):
    docs = renders[combo]
    assert len({m.key(d) for d in docs}) == len(docs), "an object rendered twice"
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, m.key(doc)
    for what, template in pod_templates(docs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", what
        for c in containers_of(template):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            assert c["image"] == "raftset:0.1.0" and c["imagePullPolicy"] == "IfNotPresent", what
            for resource in ("cpu", "memory", "ephemeral-storage"):
                request = c["resources"]["requests"][resource]
                limit = c["resources"]["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{what}: {resource}"
    env = [e["name"] for e in sts(docs)["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert len(env) == len(set(env)), env
    assert EXPECTED_ENV <= set(env) <= EXPECTED_ENV | COMPONENT_ENV, env
    pdb = one(docs, "PodDisruptionBudget", "raftset")
    replicas = sts(docs)["spec"]["replicas"]
    assert evictions_allowed(pdb, replicas) >= 1, "the budget would block every drain"
    assert evictions_allowed(pdb, replicas) <= max(1, (replicas - 1) // 2), (
        "the budget lets a drain take the quorum")


# What the `restricted` Pod Security Standard allows (kubernetes.io/docs/
# concepts/security/pod-security-standards), as the namespace enforces it.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=m.combination_label)
def test_every_pod_meets_the_restricted_pod_security_standard(renders, combo):
    docs = renders[combo]
    namespace = one(docs, "Namespace", "raftset")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, template in pod_templates(docs):
        spec = template["spec"]
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), f"{name}: {field}"
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{name}: volume {volume['name']} is {kinds}"
        pod_sc = spec.get("securityContext", {})
        for c in containers_of(template):
            sc = {**pod_sc, **c.get("securityContext", {})}
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("runAsUser", 1) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert c.get("securityContext", {}).get("capabilities", {}).get("drop") == ["ALL"], where
            assert not c.get("securityContext", {}).get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), where
            assert not any("hostPort" in p for p in c.get("ports", [])), where


@pytest.mark.parametrize("combo", COMBINATIONS, ids=m.combination_label)
def test_every_volume_holds_twice_its_space_quota(renders, combo):
    """sled can outgrow the quota by a burst of writes, and the snapshot file
    sits beside the database (README, "Configuration")."""
    default = re.search(r"DEFAULT_QUOTA_BYTES: u64 = ([0-9* ]+);",
                        (m.REPO / "src" / "config.rs").read_text())
    quota = math.prod(int(factor) for factor in default.group(1).split("*"))
    statefulset = sts(renders[combo])
    env = {e["name"]: e.get("value") for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    quota = int(env.get("RAFTSET_QUOTA_BYTES", quota))
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 2 * quota


def test_component_env_is_read_by_raftset():
    declared = set()
    for path in (m.REPO / "src").rglob("*.rs"):
        declared |= set(re.findall(r'env\s*=\s*"(RAFTSET_[A-Z0-9_]+)"', path.read_text()))
    assert COMPONENT_ENV <= declared, sorted(COMPONENT_ENV - declared)


# --- production ----------------------------------------------------------------


def test_production_requires_one_voter_per_node(production):
    pod = sts(production)["spec"]["template"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    required = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [t["topologyKey"] for t in required] == ["kubernetes.io/hostname"]
    assert labels_selected(required[0]["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_production_spreads_voters_over_three_zones_or_waits(production):
    pod = sts(production)["spec"]["template"]
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["minDomains"] == 3
    assert labels_selected(spread["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_production_priority_class_is_defined_and_below_the_system_classes(production):
    name = sts(production)["spec"]["template"]["spec"]["priorityClassName"]
    priority = one(production, "PriorityClass", name)
    assert 0 < priority["value"] < 1_000_000_000, "user classes stay below the system ones"
    assert priority["globalDefault"] is False


def test_production_pods_have_guaranteed_qos(production):
    for c in containers_of(sts(production)["spec"]["template"]):
        resources = c["resources"]
        for resource in ("cpu", "memory"):
            assert resources["requests"][resource] == resources["limits"][resource], (
                f"{c['name']}: {resource} request != limit: Burstable, not Guaranteed")
        assert quantity(resources["limits"]["cpu"]).is_integer(), "whole CPUs for the CPU manager"


def test_production_grows_the_volume_the_cache_and_the_memory(base, production):
    def storage(docs):
        (claim,) = sts(docs)["spec"]["volumeClaimTemplates"]
        return quantity(claim["spec"]["resources"]["requests"]["storage"])

    def container(docs):
        return sts(docs)["spec"]["template"]["spec"]["containers"][0]

    assert storage(production) >= 10 * storage(base)
    memory = quantity(container(production)["resources"]["limits"]["memory"])
    assert memory > quantity(container(base)["resources"]["limits"]["memory"])
    env = {e["name"]: e.get("value") for e in container(production)["env"]}
    assert int(env["RAFTSET_CACHE_MB"]) * 2**20 <= memory / 2, "the cache leaves room"


def test_production_keeps_three_voters_and_their_budget(production):
    assert sts(production)["spec"]["replicas"] == 3
    assert one(production, "PodDisruptionBudget", "raftset")["spec"]["maxUnavailable"] == 1


# --- small ---------------------------------------------------------------------


def test_small_runs_one_node_that_a_drain_can_move(small):
    assert sts(small)["spec"]["replicas"] == 1
    pdb = one(small, "PodDisruptionBudget", "raftset")
    assert evictions_allowed(pdb, 1) == 1, "a drain could never evict the only pod"
    assert evictions_allowed(pdb, 3) == 1, "scaled up, the budget keeps a quorum again"


def test_small_keeps_the_scale_down_hook_and_fits_a_laptop(base, small):
    def container(docs):
        return sts(docs)["spec"]["template"]["spec"]["containers"][0]

    # With one replica the hook keeps pod 0 a member (its ordinal is below
    # spec.replicas): a restart stays a restart.
    assert container(small)["lifecycle"] == container(base)["lifecycle"]
    limits = container(small)["resources"]["limits"]
    assert quantity(limits["memory"]) <= 256 * 2**20
    (claim,) = sts(small)["spec"]["volumeClaimTemplates"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) < 2**30


# --- monitoring ----------------------------------------------------------------


def test_the_monitoring_component_adds_exactly_k8s_monitoring(base):
    with_monitoring = m.render_components(("monitoring",))
    added = {m.key(d) for d in with_monitoring} - {m.key(d) for d in base}
    assert added == {m.key(d) for d in m.monitoring_docs()}
    component = m.load_docs(m.kustomization_file(m.COMPONENTS / "monitoring"))[0]
    assert component["resources"] == ["../../monitoring"], "wraps k8s/monitoring, no copies"
    assert list((m.COMPONENTS / "monitoring").iterdir()) == [
        m.COMPONENTS / "monitoring" / "kustomization.yaml"]


# --- scheduled-backup ----------------------------------------------------------


@pytest.fixture(scope="module")
def backups() -> list[dict]:
    return m.render_components(("scheduled-backup",))


def backup_pod(docs) -> dict:
    return one(docs, "CronJob", "raftset-backup")["spec"]["jobTemplate"]["spec"]["template"]


def test_backups_run_one_at_a_time_retry_briefly_and_keep_little_history(backups):
    cron = one(backups, "CronJob", "raftset-backup")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid", "two runs would race on retention"
    assert len(cron["schedule"].split()) == 5 and cron["timeZone"] == "Etc/UTC"
    assert 0 < cron["startingDeadlineSeconds"]
    assert 1 <= cron["successfulJobsHistoryLimit"] <= 5
    assert 1 <= cron["failedJobsHistoryLimit"] <= 5
    job = cron["jobTemplate"]["spec"]
    assert 1 <= job["backoffLimit"] <= 3
    assert 0 < job["activeDeadlineSeconds"] < 24 * 3600, "a hung run must end before the next"
    assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_backups_keep_the_newest_n_on_their_own_claim(backups):
    pod = backup_pod(backups)["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "backup"
    directory = args[args.index("--dir") + 1]
    assert int(args[args.index("--keep") + 1]) >= 1
    mount = next(v for v in container["volumeMounts"] if v["mountPath"] == directory)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = one(backups, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # The README's restore and wipe steps delete every claim labelled
    # app.kubernetes.io/name=raftset: never the backups.
    assert claim["metadata"]["labels"]["app.kubernetes.io/name"] != "raftset"
    writable = {v["mountPath"] for v in container["volumeMounts"] if not v.get("readOnly")}
    assert writable == {directory}, "the backup volume is all it writes"


def test_backups_reach_a_client_port_that_takes_admin_calls(backups, base):
    env = {e["name"]: e.get("value") for e in sts(backups)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("RAFTSET_REMOTE_ADMIN") == "true", "a backup is an admin call"
    base_env = {e["name"] for e in sts(base)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "RAFTSET_REMOTE_ADMIN" not in base_env, "admin stays on loopback unless needed"


def test_backups_send_the_admin_token_and_mount_no_other(backups):
    pod = backup_pod(backups)["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    token = env["RAFTSET_TOKEN_FILE"]
    mount = next(v for v in container["volumeMounts"] if token.startswith(v["mountPath"] + "/"))
    assert mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "raftset-client-tokens"
    assert [i["path"] for i in volume["secret"]["items"]] == [token.rsplit("/", 1)[1]]


def test_backups_reach_the_cluster_through_the_client_service(backups):
    pod = backup_pod(backups)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    host, _, port = env["RAFTSET_ENDPOINTS"].partition(":")
    service = one(backups, "Service", host)
    assert service["spec"].get("publishNotReadyAddresses") is not True, "ready members only"
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
    labels = pod["metadata"]["labels"]

    def admits(peer: dict) -> bool:
        # A bare podSelector means pods of the policy's own namespace.
        selector = peer.get("podSelector", {}).get("matchLabels", {})
        return set(peer) == {"podSelector"} and all(labels.get(k) == v
                                                    for k, v in selector.items())

    policy = one(backups, "NetworkPolicy", "raftset")["spec"]
    assert any(
        int(port) in {p["port"] for p in rule["ports"]} and any(map(admits, rule["from"]))
        for rule in policy["ingress"]
    ), "the NetworkPolicy does not let the backup pod reach the client port"


def test_backup_pods_are_no_raftset_member(backups):
    labels = backup_pod(backups)["metadata"]["labels"]
    selectors = [sts(backups)["spec"]["selector"]["matchLabels"],
                 one(backups, "PodDisruptionBudget", "raftset")["spec"]["selector"]["matchLabels"]]
    selectors += [s["spec"]["selector"] for s in backups if s["kind"] == "Service"]
    selectors += [d["spec"]["selector"]["matchLabels"] for d in m.monitoring_docs()
                  if d["kind"] == "PodMonitor"]
    for selector in selectors:
        assert not labels_selected(selector, labels), f"{selector} selects the backup pods"


def test_backup_pods_run_without_a_service_account_token_or_credentials(backups):
    pod = backup_pod(backups)["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["fsGroup"] == 10001, "the claim must be writable by UID 10001"
    (container,) = pod["containers"]
    assert not any("valueFrom" in e for e in container["env"]), (
        "client auth does not exist yet: no Secret may be invented for it")
