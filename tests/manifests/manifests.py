"""Loading, rendering and schema-validating raftset's Kubernetes manifests.

Used by test_manifests.py and by scripts/validate-manifests:

    python3 tests/manifests/manifests.py validate [--versions 1.32.0,1.37.0]
    python3 tests/manifests/manifests.py render k8s/overlays/parallel
    python3 tests/manifests/manifests.py render --components production,monitoring
    python3 tests/manifests/manifests.py promql DIR

k8s/monitoring/ (Prometheus-Operator resources and a Grafana dashboard) is
kept out of the core set: its custom resources have no Kubernetes schema,
and the deployment does not refer to it. Its core objects (ConfigMap,
NetworkPolicy) are validated strictly like the rest; `promql` writes its
alert expressions and dashboard queries as Prometheus rule files for
`promtool check rules`.

k8s/components/ are kustomize components, which do not render alone: each
combination an overlay may use (one profile or none, with any set of
add-ons, see `combinations`) is rendered on top of k8s/base and validated,
custom resources (the monitoring component's) apart as above.

Rendering is `kubectl kustomize`, the kustomize that `kubectl apply -k` runs
and the one the e2e tests render with (tests/cluster/support/), so
every check sees the objects a cluster would get. Without kubectl it stops
and says so.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
MONITORING = K8S / "monitoring"
EXTRAS = K8S / "extras"
BASE = K8S / "base"
COMPONENTS = K8S / "components"
# Components that each shape the whole StatefulSet: at most one at a time.
# Every other component is an add-on, used with any profile or none.
PROFILES = ("production", "small")
# API groups of custom resources: no Kubernetes schema to validate against
# (test_monitoring.py checks them instead).
CUSTOM_API_GROUPS = {"monitoring.coreos.com"}
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The oldest Kubernetes the manifests target: persistentVolumeClaimRetentionPolicy
# is GA from 1.32, unhealthyPodEvictionPolicy from 1.31.
MIN_KUBERNETES = "1.32.0"


class RenderError(Exception):
    pass


def load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def is_monitoring(path: Path) -> bool:
    return MONITORING in path.resolve().parents or path.resolve() == MONITORING


def is_extra(path: Path) -> bool:
    """Under k8s/extras/: resources of CRDs this repository has no schemas
    for (cert-manager), left out of every check but their own test."""
    return EXTRAS in path.resolve().parents or path.resolve() == EXTRAS


def kustomization_dirs() -> list[Path]:
    """Every directory under k8s/ that holds a kustomization or a component
    (k8s/monitoring/ apart)."""
    return sorted(
        p.parent
        for p in K8S.rglob("*")
        if p.name in KUSTOMIZATION_NAMES and not is_monitoring(p) and not is_extra(p)
    )


def is_component(directory: Path) -> bool:
    return load_docs(kustomization_file(directory))[0].get("kind") == "Component"


def renderable_dirs() -> list[Path]:
    """The kustomizations that render alone: k8s/, base/ and every overlay."""
    return [d for d in kustomization_dirs() if not is_component(d)]


def component_names() -> list[str]:
    return sorted(d.name for d in kustomization_dirs() if d.parent == COMPONENTS)


def addon_names() -> list[str]:
    return [c for c in component_names() if c not in PROFILES]


def combinations() -> list[tuple[str, ...]]:
    """Every set of components an overlay may put on k8s/base: no profile or
    one, with any subset of the add-ons."""
    addons = addon_names()
    addon_sets = [
        combo for n in range(len(addons) + 1) for combo in itertools.combinations(addons, n)
    ]
    return [
        profile + addons for profile in [()] + [(p,) for p in PROFILES] for addons in addon_sets
    ]


def is_custom(doc: dict) -> bool:
    return doc.get("apiVersion", "").split("/")[0] in CUSTOM_API_GROUPS


def yaml_files() -> list[Path]:
    """Every YAML file of the deployment (k8s/monitoring/ apart)."""
    return sorted(
        p
        for p in K8S.rglob("*")
        if p.suffix in (".yaml", ".yml") and p.is_file() and not is_monitoring(p)
        and not is_extra(p)
    )


def monitoring_docs() -> list[dict]:
    return render(MONITORING)


def promql_rule_files(out: Path) -> list[Path]:
    """Writes the PrometheusRule's groups, and every dashboard query as a
    recording rule, into rule files under `out`; returns their paths."""
    docs = monitoring_docs()
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alerts = out / "raftset-alerts.rules.yaml"
    alerts.write_text(yaml.safe_dump(rule["spec"], sort_keys=False), encoding="utf-8")
    dashboard = dashboard_json(docs)
    queries = [
        {"record": f"raftset:dashboard_query:{i}", "expr": expr.replace("$namespace", "raftset")}
        for i, expr in enumerate(dashboard_exprs(dashboard))
    ]
    panels = out / "raftset-dashboard.rules.yaml"
    panels.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}), encoding="utf-8"
    )
    return [alerts, panels]


def dashboard_json(docs: list[dict]) -> dict:
    import json

    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    (text,) = config_map["data"].values()
    return json.loads(text)


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def referenced_files() -> tuple[set[Path], set[Path]]:
    """(resource files, patch files) named by any kustomization under k8s/."""
    resources, patches = set(), set()
    for d in kustomization_dirs():
        k = load_docs(kustomization_file(d))[0]
        for r in k.get("resources", []) or []:
            p = (d / r).resolve()
            if p.is_file():
                resources.add(p)
        for patch in k.get("patches", []) or []:
            if "path" in patch:
                patches.add((d / patch["path"]).resolve())
        for p in k.get("patchesStrategicMerge", []) or []:
            patches.add((d / p).resolve())
    return resources, patches


def resource_files() -> list[Path]:
    """Complete resource manifests: every YAML file that is neither a
    kustomization nor a patch."""
    _, patches = referenced_files()
    return [
        p
        for p in yaml_files()
        if p.name not in KUSTOMIZATION_NAMES and p.resolve() not in patches
    ]


# --- rendering ---------------------------------------------------------------


KUBECTL_MISSING = (
    "kubectl is not installed: k8s/ is rendered with `kubectl kustomize`; "
    "install kubectl (with kustomize 5, as in kubectl 1.32)"
)


def render(directory: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        raise RenderError(KUBECTL_MISSING)
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def render_components(components: tuple[str, ...]) -> list[dict]:
    """k8s/base with these components, as an overlay would render it. The
    kustomization is written into a temporary directory and refers to k8s/
    by relative paths (kustomize refuses absolute ones)."""
    with tempfile.TemporaryDirectory() as tmp:
        relative = lambda p: os.path.relpath(p, tmp)  # noqa: E731
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [relative(BASE)],
            "components": [relative(COMPONENTS / c) for c in components],
        }
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
        return render(Path(tmp))


def combination_label(components: tuple[str, ...]) -> str:
    return "k8s/base + " + (" + ".join(components) if components else "no component")


def key(doc: dict) -> tuple[str, str, str]:
    m = doc.get("metadata", {})
    return (doc.get("kind", ""), m.get("namespace", ""), m.get("name", ""))


# --- schema validation -------------------------------------------------------


def all_renders() -> list[tuple[str, Callable[[], list[dict]]]]:
    """Every way k8s/ is deployed, as (label, render): each kustomization,
    k8s/monitoring/, and k8s/base with every combination of components."""
    renders = [(f"{d.relative_to(REPO)}/ (rendered)", lambda d=d: render(d)) for d in renderable_dirs()]
    renders.append(("k8s/monitoring/ (rendered)", monitoring_docs))
    renders += [
        (f"{combination_label(c)} (rendered)", lambda c=c: render_components(c))
        for c in combinations()
    ]
    return renders


def write_renders(directory: Path) -> list[Path]:
    """Writes each of all_renders() into its own file in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for n, (label, rendered) in enumerate(all_renders()):
        path = directory / f"render-{n:02d}.yaml"
        path.write_text(f"# {label}\n" + yaml.safe_dump_all(rendered(), sort_keys=False), encoding="utf-8")
        written.append(path)
    return written


def schema_versions() -> list[str]:
    """The oldest targeted and the newest Kubernetes the package has schemas for."""
    from kubernetes_validate import utils

    shipped = sorted(set(utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    newest = shipped[-1]
    if MIN_KUBERNETES not in shipped:
        raise SystemExit(
            f"kubernetes-validate has no schema for {MIN_KUBERNETES}; "
            "upgrade it: python3 -m pip install -U kubernetes-validate"
        )
    return sorted({MIN_KUBERNETES, newest}, key=lambda v: tuple(map(int, v.split("."))))


def validate(versions: list[str], verbose: bool = False) -> int:
    """Strict schema validation of every resource file and every rendered
    kustomization. Returns the number of failures."""
    import kubernetes_validate
    from kubernetes_validate import utils

    items: list[tuple[str, dict]] = []
    for path in resource_files():
        for doc in load_docs(path):
            items.append((str(path.relative_to(REPO)), doc))
    renders = all_renders()
    custom = 0
    for label, rendered in renders:
        try:
            docs = rendered()
        except RenderError as e:
            print(f"FAIL {label}: {e}")
            return 1
        for doc in docs:
            if is_custom(doc):
                custom += 1
            else:
                items.append((label, doc))

    failures = 0
    for version in versions:
        for label, doc in items:
            what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except utils.ValidationError as e:
                failures += 1
                path = ".".join(str(p) for p in e.path) or "(top level)"
                print(f"FAIL {label} {what} (Kubernetes {version}): {path}: {e.message}")
            except utils.SchemaNotFoundError as e:
                failures += 1
                print(f"FAIL {label} {what} (Kubernetes {version}): {e.message}")
            else:
                if verbose:
                    print(f"ok   {label} {what} (Kubernetes {version}, strict)")
    print(
        f"schema validation: {len(items)} resources x {len(versions)} versions "
        f"({', '.join(versions)}), {failures} failed; rendered with kubectl kustomize "
        f"({len(renders)} renders, {len(combinations())} of them component combinations; "
        f"{custom} custom resources left to test_monitoring.py)"
    )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="strict schema validation of k8s/")
    v.add_argument("--versions", help="comma-separated Kubernetes versions")
    v.add_argument("-v", "--verbose", action="store_true", help="list every resource")
    r = sub.add_parser("render", help="print a kustomization as rendered here")
    r.add_argument("directory", type=Path, nargs="?")
    r.add_argument("--components", help="render k8s/base with these components instead")
    q = sub.add_parser("promql", help="write k8s/monitoring's PromQL as rule files into DIR")
    q.add_argument("directory", type=Path)
    w = sub.add_parser("renders", help="write every render of k8s/ into DIR, one file each")
    w.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.command == "renders":
        for path in write_renders(args.directory):
            print(path)
        return 0
    if args.command == "promql":
        for path in promql_rule_files(args.directory):
            print(path)
        return 0
    if args.command == "render":
        if args.components is not None:
            docs = render_components(tuple(c for c in args.components.split(",") if c))
        elif args.directory is not None:
            docs = render(args.directory)
        else:
            parser.error("render needs a DIRECTORY or --components")
        yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
        return 0
    versions = args.versions.split(",") if args.versions else schema_versions()
    return 1 if validate(versions, args.verbose) else 0


if __name__ == "__main__":
    sys.exit(main())
