"""Loading, rendering and schema-validating raftset's Kubernetes manifests.

Used by test_manifests.py and by scripts/validate-manifests:

    python3 tests/manifests/manifests.py validate [--versions 1.32.0,1.37.0]
    python3 tests/manifests/manifests.py render k8s/overlays/parallel

Rendering uses `kubectl kustomize` (or `kustomize build`) when one is
installed, and otherwise a small built-in renderer that handles exactly the
kustomization features k8s/ uses (resources, and strategic-merge patches that
name their target by kind and name); it refuses anything else rather than
render it wrongly. RAFTSET_RENDERER=python forces the built-in one.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
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


def kustomization_dirs() -> list[Path]:
    """Every directory under k8s/ that holds a kustomization."""
    return sorted(p.parent for p in K8S.rglob("*") if p.name in KUSTOMIZATION_NAMES)


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


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


def external_renderer() -> list[str] | None:
    if os.environ.get("RAFTSET_RENDERER") == "python":
        return None
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def renderer_name() -> str:
    cmd = external_renderer()
    return " ".join(cmd) if cmd else "built-in Python renderer"


def render(directory: Path) -> list[dict]:
    cmd = external_renderer()
    if cmd is None:
        return render_python(directory)
    out = subprocess.run(
        [*cmd, str(directory)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RenderError(f"{' '.join(cmd)} {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


# Strategic merge keys of the lists this project could patch; other lists are
# replaced, as kustomize does for lists without a merge key.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
SUPPORTED = {"apiVersion", "kind", "resources", "patches"}


def strategic_merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise RenderError(f"patch directive {key} is not supported by the built-in renderer")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value)
        elif (
            isinstance(value, list)
            and key in MERGE_KEYS
            and isinstance(target.get(key), list)
        ):
            merge_key = MERGE_KEYS[key]
            for item in value:
                match = [t for t in target[key] if t.get(merge_key) == item.get(merge_key)]
                if match:
                    strategic_merge(match[0], item)
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def render_python(directory: Path) -> list[dict]:
    kfile = kustomization_file(directory)
    if kfile is None:
        raise RenderError(f"{directory} has no kustomization.yaml")
    k = load_docs(kfile)[0]
    unsupported = set(k) - SUPPORTED
    if unsupported:
        raise RenderError(
            f"{kfile}: {sorted(unsupported)} not supported by the built-in renderer; "
            "install kubectl or kustomize"
        )
    docs: list[dict] = []
    for r in k.get("resources", []) or []:
        path = directory / r
        docs += render_python(path) if path.is_dir() else load_docs(path)
    for entry in k.get("patches", []) or []:
        if set(entry) - {"path", "patch"}:
            raise RenderError(f"{kfile}: patch options {sorted(set(entry))} not supported")
        body = (
            load_docs(directory / entry["path"])
            if "path" in entry
            else list(yaml.safe_load_all(entry["patch"]))
        )
        if len(body) != 1 or not isinstance(body[0], dict):
            raise RenderError(f"{kfile}: only single strategic-merge patches are supported")
        patch = body[0]
        meta = patch.get("metadata", {})
        targets = [
            d
            for d in docs
            if d.get("kind") == patch.get("kind")
            and d["metadata"].get("name") == meta.get("name")
            and ("namespace" not in meta or d["metadata"].get("namespace") == meta["namespace"])
        ]
        if len(targets) != 1:
            raise RenderError(
                f"{kfile}: patch for {patch.get('kind')}/{meta.get('name')} "
                f"matches {len(targets)} resources"
            )
        strategic_merge(targets[0], patch)
    return docs


def key(doc: dict) -> tuple[str, str, str]:
    m = doc.get("metadata", {})
    return (doc.get("kind", ""), m.get("namespace", ""), m.get("name", ""))


# --- schema validation -------------------------------------------------------


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
    for d in kustomization_dirs():
        label = f"{d.relative_to(REPO)}/ (rendered)"
        try:
            for doc in render(d):
                items.append((label, doc))
        except RenderError as e:
            print(f"FAIL {label}: {e}")
            return 1

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
        f"({', '.join(versions)}), {failures} failed; rendered with {renderer_name()}"
    )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="strict schema validation of k8s/")
    v.add_argument("--versions", help="comma-separated Kubernetes versions")
    v.add_argument("-v", "--verbose", action="store_true", help="list every resource")
    r = sub.add_parser("render", help="print a kustomization as rendered here")
    r.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.command == "render":
        yaml.safe_dump_all(render(args.directory), sys.stdout, sort_keys=False)
        return 0
    versions = args.versions.split(",") if args.versions else schema_versions()
    return 1 if validate(versions, args.verbose) else 0


if __name__ == "__main__":
    sys.exit(main())
