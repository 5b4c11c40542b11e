"""Kubernetes deployment of the ffhq-uv services: a kustomize-subset renderer and a small
rollout tool on the official ``kubernetes`` Python client.

    ffhquv deploy render k8s/overlays/prod          # YAML on stdout, same as `kubectl kustomize`
    ffhquv deploy set-image fitter 0.2.1 [--overlay prod] [--namespace NS] [--timeout 900]
    ffhquv deploy wait fitter [--timeout 900] [--rollback]
    ffhquv deploy rollback fitter [--to-revision N]
    ffhquv deploy status [SERVICE]

Renderer (:func:`render`, :func:`build`): the subset of kustomize that ``k8s/`` uses, with the
output of ``kubectl kustomize`` (kustomize v5): ``resources`` (files and kustomization
folders), ``namespace``, ``labels`` (``pairs``; ``includeSelectors``/``includeTemplates``),
``commonLabels``, ``images`` (``newName``/``newTag``/``digest``), ``patches`` (strategic merge
and JSON 6902, from ``path`` or inline ``patch``, with ``target`` selection by kind / name /
labelSelector), ``$patch: delete``, and kustomize's legacy output order. Anything else in a
kustomization raises :class:`KustomizeError` instead of being silently ignored.

Rollouts (:class:`Deployer`): ``set-image`` patches only the one container image of one
Deployment (a strategic merge patch, so only that service rolls), ``wait`` follows the rollout
like ``kubectl rollout status`` (observedGeneration, updatedReplicas, availableReplicas, the
Progressing condition), ``set-image`` rolls back by itself when the new pods do not become ready
within the timeout (it restores the previous image), ``rollback`` restores an earlier revision
from its ReplicaSet like ``kubectl rollout undo``.

Exit codes of :func:`main`: 0 done, 1 rollout failed (rolled back when asked), 2 bad usage or
bad manifests, 3 the rollback failed too, 4 Kubernetes API error.
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICES = ("detector", "fitter", "eyeball", "exporter", "gateway")
REPO_ROOT = Path(__file__).resolve().parent.parent
OVERLAYS_DIR = REPO_ROOT / "k8s" / "overlays"
DEFAULT_NAMESPACE = "ffhquv"
CHANGE_CAUSE = "kubernetes.io/change-cause"
REVISION = "deployment.kubernetes.io/revision"

Obj = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization (or a patch) that the renderer cannot build."""


class RolloutFailed(RuntimeError):
    """A rollout did not complete: new pods not ready in time, or progress deadline exceeded."""


# ---------------------------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------------------------

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "commonLabels",
                    "images", "patches"}

# kustomize's legacy resource order (api/resid/gvk.go): these kinds first, in this order ...
ORDER_FIRST = ("Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
               "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
               "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange",
               "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment",
               "StatefulSet", "CronJob", "PodDisruptionBudget")
# ... these last, every other kind in between (then by group_version_kind, then by name).
ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")

CLUSTER_SCOPED = {"Namespace", "StorageClass", "CustomResourceDefinition", "ClusterRole",
                  "ClusterRoleBinding", "PersistentVolume", "PriorityClass", "IngressClass",
                  "RuntimeClass", "PodSecurityPolicy", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration", "APIService", "CSIDriver", "Node",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}

# Where commonLabels / labels(includeSelectors) put selector labels.
SELECTOR_PATHS = {
    "Service": [("spec", "selector")],
    "Deployment": [("spec", "selector", "matchLabels")],
    "StatefulSet": [("spec", "selector", "matchLabels")],
    "DaemonSet": [("spec", "selector", "matchLabels")],
    "ReplicaSet": [("spec", "selector", "matchLabels")],
    "Job": [("spec", "selector", "matchLabels")],
    "PodDisruptionBudget": [("spec", "selector", "matchLabels")],
}
TEMPLATE_LABEL_PATHS = {
    "Deployment": ("spec", "template", "metadata", "labels"),
    "StatefulSet": ("spec", "template", "metadata", "labels"),
    "DaemonSet": ("spec", "template", "metadata", "labels"),
    "ReplicaSet": ("spec", "template", "metadata", "labels"),
    "Job": ("spec", "template", "metadata", "labels"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "metadata", "labels"),
}


def _load_yaml_docs(text: str, source: str) -> list[Any]:
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        raise KustomizeError(f"{source}: invalid YAML: {e}") from e


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _gvk(obj: Obj) -> tuple[str, str, str]:
    api = str(obj.get("apiVersion", ""))
    group, _, version = api.rpartition("/")
    return group, version, str(obj.get("kind", ""))


def _gvk_string(obj: Obj) -> str:
    # resid.Gvk.String(): "<group>_<version>_<kind>", "~G" for the core group.
    group, version, kind = _gvk(obj)
    return f"{group or '~G'}_{version or '~V'}_{kind or '~K'}"


def _order_key(obj: Obj) -> tuple[int, str, str, str]:
    kind = obj.get("kind", "")
    if kind in ORDER_FIRST:
        rank = ORDER_FIRST.index(kind) - len(ORDER_FIRST)
    elif kind in ORDER_LAST:
        rank = 1 + ORDER_LAST.index(kind)
    else:
        rank = 0
    meta = obj.get("metadata") or {}
    return rank, _gvk_string(obj), str(meta.get("namespace", "")), str(meta.get("name", ""))


def _resource_id(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" (namespace {ns})" if ns else "")


def _check_resource(obj: Any, source: str) -> Obj:
    if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
        raise KustomizeError(f"{source}: every document must be a mapping with apiVersion and kind")
    if not (obj.get("metadata") or {}).get("name"):
        raise KustomizeError(f"{source}: {obj.get('kind')} without metadata.name")
    return obj


# --- strategic merge patch --------------------------------------------------------------------

# x-kubernetes-patch-merge-key of the list fields the manifests use (keyed by field name; the
# Service's "ports" merge on "port", a container's on "containerPort").
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
    "imagePullSecrets": "name", "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip", "conditions": "type", "resourceClaims": "name",
}
# Primitive lists that merge as sets (patchStrategy: merge); every other list is replaced.
SET_LISTS = {"finalizers"}


def _merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    name = path[-1]
    if name == "ports":
        return "port" if (kind == "Service" and path == ("spec", "ports")) else "containerPort"
    return MERGE_KEYS.get(name)


def strategic_merge(original: Any, patch: Any, kind: str = "", path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch (the subset kustomize uses) and return the result.

    Maps merge key by key (``null`` deletes a key, ``$patch: replace`` replaces the map), lists
    of objects with a merge key merge by that key (``$patch: delete`` items remove an entry;
    the patched entries come first, then the untouched ones, as kustomize orders them), every
    other list is replaced. ``original`` is not modified.
    """
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise KustomizeError(f"unsupported $patch directive {directive!r} at /{'/'.join(path)}")
    out = copy.deepcopy(original)
    for key, value in patch.items():
        if key == "$patch":
            continue
        if key.startswith("$"):
            raise KustomizeError(f"unsupported patch directive {key!r} at /{'/'.join(path)}")
        sub = (*path, key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, kind, sub)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, kind, sub)
        else:
            out[key] = _strip_directives(copy.deepcopy(value))
    return out


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value
                if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return value


def _merge_list(original: list, patch: list, kind: str, path: tuple[str, ...]) -> list:
    if path[-1] in SET_LISTS:
        return [*patch, *[v for v in original if v not in patch]]
    key = _merge_key(kind, path)
    if key is None or not all(isinstance(p, dict) and key in p for p in patch):
        return [_strip_directives(copy.deepcopy(v)) for v in patch]
    index = {item.get(key): i for i, item in enumerate(original) if isinstance(item, dict)}
    used: set[int] = set()
    merged: list = []
    for p in patch:
        i = index.get(p[key])
        if i is not None:
            used.add(i)
        if p.get("$patch") == "delete":
            continue
        merged.append(strategic_merge(original[i], p, kind, path) if i is not None
                      else _strip_directives(copy.deepcopy(p)))
    return merged + [copy.deepcopy(v) for i, v in enumerate(original) if i not in used]


# --- JSON patch (RFC 6902) --------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for p in parts:
        if isinstance(doc, list):
            if not p.isdigit() or int(p) >= len(doc):
                raise KustomizeError(f"JSON patch path {path!r}: no index {p!r}")
            doc = doc[int(p)]
        elif isinstance(doc, dict):
            if p not in doc:
                raise KustomizeError(f"JSON patch path {path!r}: no key {p!r}")
            doc = doc[p]
        else:
            raise KustomizeError(f"JSON patch path {path!r}: {p!r} is inside a scalar")
    return doc


def json_patch(doc: Any, ops: list[Obj]) -> Any:
    """Apply RFC 6902 operations (add, remove, replace, move, copy, test); returns a new doc."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parts = _pointer(path)
        if kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, src, op.get("from", "")))
            if kind == "move":
                doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            doc = json_patch(doc, [{"op": "add", "path": path, "value": value}])
            continue
        if kind == "test":
            if _walk(doc, parts, path) != op.get("value"):
                raise KustomizeError(f"JSON patch test failed at {path!r}")
            continue
        if not parts:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op["value"])
                continue
            raise KustomizeError(f"cannot {kind} the whole document")
        parent = _walk(doc, parts[:-1], path)
        last = parts[-1]
        if kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif last.isdigit() and int(last) <= len(parent):
                    parent.insert(int(last), value)
                else:
                    raise KustomizeError(f"JSON patch add {path!r}: bad index")
            else:
                parent[last] = value
        elif kind in ("remove", "replace"):
            _walk(parent, [last], path)  # must exist
            if kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"unsupported JSON patch op {kind!r}")
    return doc


# --- selection -------------------------------------------------------------------------------

_REQ = re.compile(r"\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|"
                  r"\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector syntax: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
    ``k notin (a,b)``, ``k``, ``!k``, comma-separated (AND)."""
    parts = re.split(r",(?![^(]*\))", selector) if selector.strip() else []
    for part in parts:
        m = _REQ.match(part)
        if not m:
            raise KustomizeError(f"bad label selector {selector!r} near {part!r}")
        neg, key, op, value, setop, values = m.groups()
        have = labels.get(key)
        if op in ("=", "=="):
            ok = have == value
        elif op == "!=":
            ok = have != value
        elif setop:
            vals = {v.strip() for v in values.split(",") if v.strip()}
            ok = (have in vals) if setop == "in" else (have not in vals)
        else:
            ok = have is not None
        if neg:
            if op or setop:
                raise KustomizeError(f"bad label selector {selector!r}: '!' only before a key")
            ok = not ok
        if not ok:
            return False
    return True


def _target_matches(obj: Obj, target: Obj) -> bool:
    group, version, kind = _gvk(obj)
    meta = obj.get("metadata") or {}
    for field_name, have in (("group", group), ("version", version), ("kind", kind),
                             ("name", meta.get("name", "")),
                             ("namespace", meta.get("namespace", ""))):
        want = target.get(field_name)
        if want is not None and not re.fullmatch(str(want), str(have)):
            return False
    if "labelSelector" in target and not label_selector_matches(
            target["labelSelector"], meta.get("labels") or {}):
        return False
    if "annotationSelector" in target and not label_selector_matches(
            target["annotationSelector"], meta.get("annotations") or {}):
        return False
    return True


# --- transformers ---------------------------------------------------------------------------

def _set_path(obj: Obj, path: tuple[str, ...], labels: dict[str, str], create: bool) -> None:
    cur: Any = obj
    for p in path[:-1]:
        if not isinstance(cur, dict):
            return
        if p not in cur:
            if not create:
                return
            cur[p] = {}
        cur = cur[p]
    if not isinstance(cur, dict):
        return
    if path[-1] not in cur:
        if not create:
            return
        cur[path[-1]] = {}
    if cur[path[-1]] is None:
        cur[path[-1]] = {}
    cur[path[-1]].update(labels)


def _apply_labels(resources: list[Obj], pairs: dict[str, str], selectors: bool,
                  templates: bool) -> None:
    pairs = {str(k): str(v) for k, v in pairs.items()}
    for obj in resources:
        _set_path(obj, ("metadata", "labels"), pairs, create=True)
        kind = obj["kind"]
        if (selectors or templates) and kind in TEMPLATE_LABEL_PATHS:
            _set_path(obj, TEMPLATE_LABEL_PATHS[kind], pairs, create=True)
        if selectors:
            for path in SELECTOR_PATHS.get(kind, []):
                _set_path(obj, path, pairs, create=True)


def _split_image(image: str) -> tuple[str, str, str]:
    """``name[:tag][@digest]`` -> (name, tag, digest); a registry port is part of the name."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _apply_images(resources: list[Obj], images: list[Obj]) -> None:
    def fix(image: str) -> str:
        name, tag, digest = _split_image(image)
        for rule in images:
            if rule.get("name") != name:
                continue
            new_name = rule.get("newName", name)
            if rule.get("digest"):
                return f"{new_name}@{rule['digest']}"
            if rule.get("newTag") is not None:
                return f"{new_name}:{rule['newTag']}"
            return new_name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        return image

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for c in value:
                        if isinstance(c, dict) and isinstance(c.get("image"), str):
                            c["image"] = fix(c["image"])
                walk(value)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for obj in resources:
        walk(obj)


def _apply_namespace(resources: list[Obj], namespace: str) -> None:
    for obj in resources:
        meta = obj.setdefault("metadata", {})
        if obj["kind"] == "Namespace":
            meta["name"] = namespace
        elif obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace


def _patch_documents(entry: Obj, base: Path) -> list[Any]:
    if "path" in entry:
        path = base / entry["path"]
        if not path.is_file():
            raise KustomizeError(f"{base}: patch file {entry['path']} not found")
        text, source = path.read_text(), str(path)
    elif "patch" in entry:
        text, source = str(entry["patch"]), f"{base}: inline patch"
    else:
        raise KustomizeError(f"{base}: a patches entry needs 'path' or 'patch'")
    docs = _load_yaml_docs(text, source)
    if len(docs) == 1 and isinstance(docs[0], list):
        return [docs[0]]
    if any(not isinstance(d, dict) for d in docs):
        raise KustomizeError(f"{source}: a patch is either one JSON 6902 list or YAML objects")
    return docs


def _apply_patch(resources: list[Obj], entry: Obj, base: Path) -> list[Obj]:
    target = entry.get("target")
    for doc in _patch_documents(entry, base):
        if isinstance(doc, list):  # JSON 6902
            if not target:
                raise KustomizeError(f"{base}: a JSON 6902 patch needs a target")
            hits = [i for i, r in enumerate(resources) if _target_matches(r, target)]
            if not hits:
                raise KustomizeError(f"{base}: patch target {target} matches no resource")
            for i in hits:
                resources[i] = json_patch(resources[i], doc)
            continue
        if target:
            hits = [i for i, r in enumerate(resources) if _target_matches(r, target)]
        else:
            meta = doc.get("metadata") or {}
            hits = [i for i, r in enumerate(resources)
                    if r["kind"] == doc.get("kind")
                    and r["metadata"]["name"] == meta.get("name")
                    and (not meta.get("namespace")
                         or r["metadata"].get("namespace") == meta.get("namespace"))]
        if not hits:
            raise KustomizeError(f"{base}: patch for {_resource_id(doc)} matches no resource")
        if doc.get("$patch") == "delete":
            resources = [r for i, r in enumerate(resources) if i not in hits]
            continue
        for i in hits:
            p = copy.deepcopy(doc)
            if target:  # the target decides; the patch's own id is ignored
                p.setdefault("metadata", {})["name"] = resources[i]["metadata"]["name"]
                p.pop("kind", None)
                p.pop("apiVersion", None)
            resources[i] = strategic_merge(resources[i], p, resources[i]["kind"])
    return resources


def build(directory: str | Path) -> list[Obj]:
    """Build the kustomization in ``directory`` into a list of resources (kustomize order).

    Transformers run in kustomize's order: patches, namespace, labels, images.
    """
    resources = _accumulate(Path(directory).resolve(), stack=())
    return sorted(resources, key=_order_key)


def _accumulate(directory: Path, stack: tuple[Path, ...]) -> list[Obj]:
    if directory in stack:
        raise KustomizeError(f"kustomization cycle through {directory}")
    kfile = _kustomization_file(directory)
    docs = _load_yaml_docs(kfile.read_text(), str(kfile))
    k = docs[0] if docs else {}
    if not isinstance(k, dict):
        raise KustomizeError(f"{kfile}: not a mapping")
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported kustomize fields {sorted(unknown)} "
                             "(ffhquv_deploy renders a subset; use kubectl kustomize)")
    resources: list[Obj] = []
    for entry in k.get("resources") or []:
        path = directory / str(entry)
        if "://" in str(entry) or str(entry).startswith("github.com/"):
            raise KustomizeError(f"{kfile}: remote resource {entry} not supported")
        if path.is_dir():
            resources += _accumulate(path.resolve(), (*stack, directory))
        elif path.is_file():
            for doc in _load_yaml_docs(path.read_text(), str(path)):
                if isinstance(doc, dict) and doc.get("kind") == "List":
                    resources += [_check_resource(d, str(path)) for d in doc.get("items") or []]
                else:
                    resources.append(_check_resource(doc, str(path)))
        else:
            raise KustomizeError(f"{kfile}: resource {entry} not found")
    seen: set[str] = set()
    for r in resources:
        rid = _gvk_string(r) + "|" + _resource_id(r)
        if rid in seen:
            raise KustomizeError(f"{kfile}: duplicate resource {_resource_id(r)}")
        seen.add(rid)
    resources = copy.deepcopy(resources)
    for entry in k.get("patches") or []:
        resources = _apply_patch(resources, entry, directory)
    if k.get("namespace"):
        _apply_namespace(resources, str(k["namespace"]))
    if k.get("commonLabels"):
        _apply_labels(resources, k["commonLabels"], selectors=True, templates=True)
    for entry in k.get("labels") or []:
        _apply_labels(resources, entry.get("pairs") or {}, bool(entry.get("includeSelectors")),
                      bool(entry.get("includeTemplates")))
    if k.get("images"):
        _apply_images(resources, list(k["images"]))
    return resources


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style scalars like kustomize's parser: only true/false are booleans and dates
    stay strings (PyYAML's YAML 1.1 would read ``yes``/``on`` as booleans)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))

# Strings that go-yaml v3 (kustomize's emitter) double-quotes because, unquoted, they would
# read as another type: null, bool (YAML 1.2 and the old 1.1 words), numbers, timestamps.
_NON_STRING = re.compile(r"""^(?:
    ~|null|Null|NULL|true|True|TRUE|false|False|FALSE
    |y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF
    |[-+]?(?:0|[1-9][0-9_]*|0[0-7_]+|0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+)
    |[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?
    |[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt ].*)?
)$""", re.VERBOSE)


class _Dumper(yaml.SafeDumper):
    """YAML like kustomize's (go-yaml v3): sorted keys, no aliases, strings that would read as
    another type double-quoted, other quoting single, multi-line strings as block literals."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if value == "" or _NON_STRING.match(value):
        style: str | None = '"'
    elif "\n" in value:
        style = "|"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _go_key_less(a: str, b: str) -> bool:
    """go-yaml v3's map key order (sorter.go): letters after other characters, digit runs
    compared as numbers (``a9`` < ``a10``), else by code point."""
    digits = False
    for i in range(min(len(a), len(b))):
        if a[i] == b[i]:
            digits = a[i].isdigit()
            continue
        al, bl = a[i].isalpha(), b[i].isalpha()
        if al and bl:
            return a[i] < b[i]
        if al or bl:
            return al if digits else bl
        an = bn = 0
        if a[i] == "0" or b[i] == "0":
            j = i - 1
            while j >= 0 and a[j].isdigit():
                if a[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(a) and a[ai].isdigit():
            an = an * 10 + int(a[ai])
            ai += 1
        bi = i
        while bi < len(b) and b[bi].isdigit():
            bn = bn * 10 + int(b[bi])
            bi += 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return a[i] < b[i]
    return len(a) < len(b)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    keys = sorted(data, key=functools.cmp_to_key(
        lambda x, y: -1 if _go_key_less(str(x), str(y)) else
        (1 if _go_key_less(str(y), str(x)) else 0)))
    return dumper.represent_mapping("tag:yaml.org,2002:map", [(k, data[k]) for k in keys])


_Dumper.add_representer(str, _str_representer)
_Dumper.add_representer(dict, _represent_dict)


def to_yaml(resources: Iterable[Obj]) -> str:
    """Serialise resources as a multi-document YAML stream (``---`` between documents)."""
    return "---\n".join(yaml.dump(r, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                                  allow_unicode=True) for r in resources)


def render(directory: str | Path) -> str:
    """``kubectl kustomize DIRECTORY`` for the supported subset: the YAML stream."""
    return to_yaml(build(directory))


def overlay_dir(overlay: str | Path) -> Path:
    """An overlay given by name (``dev``, ``dev-cpu``, ``prod``) or by path."""
    p = Path(overlay)
    if p.is_dir():
        return p
    named = OVERLAYS_DIR / str(overlay)
    if named.is_dir():
        return named
    known = sorted(d.name for d in OVERLAYS_DIR.iterdir() if d.is_dir()) \
        if OVERLAYS_DIR.is_dir() else []
    raise KustomizeError(f"no overlay {overlay!r} (neither a folder nor one of {known})")


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

TAG_RE = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|sha256:[0-9a-f]{64})$")


def deployment_name(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return f"ffhquv-{service}"


def resolve_image(current: str, tag_or_image: str) -> str:
    """``tag_or_image`` as a full image reference: a tag (or ``sha256:`` digest) goes onto the
    repository of ``current``; anything with a ``/`` is taken as a full reference."""
    if "/" in tag_or_image:
        _, tag, digest = _split_image(tag_or_image)
        if not tag and not digest:
            raise ValueError(f"image {tag_or_image!r} has neither a tag nor a digest")
        if tag == "latest":
            raise ValueError("refusing the 'latest' tag: every service runs a pinned version")
        return tag_or_image
    return image_with_tag(current, tag_or_image)


def image_with_tag(image: str, tag: str) -> str:
    """Replace the tag (or digest) of ``image``; ``tag`` may be ``sha256:<hex>`` (a digest)."""
    if not TAG_RE.match(tag):
        raise ValueError(f"bad image tag {tag!r}")
    if tag == "latest":
        raise ValueError("refusing the 'latest' tag: every service runs a pinned version")
    name, _, _ = _split_image(image)
    return f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"


@dataclass
class RolloutStatus:
    """One look at a Deployment's rollout (the fields ``kubectl rollout status`` reads)."""

    name: str
    generation: int
    observed_generation: int
    desired: int
    replicas: int
    updated: int
    ready: int
    available: int
    done: bool
    failed: bool
    message: str
    images: list[str] = field(default_factory=list)
    revision: str = ""


def rollout_status(dep: Any) -> RolloutStatus:
    """``kubectl rollout status`` logic on a ``V1Deployment``."""
    st = dep.status
    spec_replicas = dep.spec.replicas if dep.spec.replicas is not None else 1
    gen = dep.metadata.generation or 0
    observed = (st.observed_generation or 0) if st else 0
    replicas = (st.replicas or 0) if st else 0
    updated = (st.updated_replicas or 0) if st else 0
    ready = (st.ready_replicas or 0) if st else 0
    available = (st.available_replicas or 0) if st else 0
    name = dep.metadata.name
    images = [c.image for c in dep.spec.template.spec.containers]
    revision = (dep.metadata.annotations or {}).get(REVISION, "")
    done = failed = False
    if gen > observed:
        msg = "waiting for the deployment spec update to be observed"
    else:
        progressing = next((c for c in (st.conditions or []) if c.type == "Progressing"), None) \
            if st else None
        if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
            failed = True
            msg = f"deployment {name} exceeded its progress deadline: {progressing.message}"
        elif updated < spec_replicas:
            msg = f"{updated} out of {spec_replicas} new replicas have been updated"
        elif replicas > updated:
            msg = f"{replicas - updated} old replicas are pending termination"
        elif available < updated:
            msg = f"{available} of {updated} updated replicas are available"
        else:
            done = True
            msg = f"deployment {name} successfully rolled out"
    return RolloutStatus(name, gen, observed, spec_replicas, replicas, updated, ready, available,
                         done, failed, msg, images, revision)


class Deployer:
    """Rollouts of single services through the Kubernetes API (``AppsV1Api``).

    ``api_client`` is a ``kubernetes.client.ApiClient`` (see :func:`api_client_from_config`);
    ``sleep`` / ``clock`` are injectable so tests can run a rollout without waiting.
    """

    def __init__(self, api_client: Any, namespace: str = DEFAULT_NAMESPACE, *,
                 poll_seconds: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None):
        from kubernetes import client

        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.clock = clock
        self.log = log or (lambda msg: print(msg, file=sys.stderr))

    def read(self, service: str) -> Any:
        return self.apps.read_namespaced_deployment(deployment_name(service), self.namespace)

    def container_image(self, service: str) -> str:
        dep = self.read(service)
        return self._container(dep, service).image

    @staticmethod
    def _container(dep: Any, service: str) -> Any:
        for c in dep.spec.template.spec.containers:
            if c.name == service:
                return c
        raise RolloutFailed(f"deployment {dep.metadata.name} has no container named {service!r}")

    def set_image(self, service: str, image: str, cause: str | None = None) -> Any:
        """Patch the image of ``service``'s container only (strategic merge: containers merge by
        name, nothing else in the pod template changes, so only this Deployment rolls)."""
        body = {
            "metadata": {"annotations": {CHANGE_CAUSE: cause or f"ffhquv deploy set-image "
                                                               f"{service} {image}"}},
            "spec": {"template": {"spec": {"containers": [{"name": service, "image": image}]}}},
        }
        return self.apps.patch_namespaced_deployment(deployment_name(service), self.namespace,
                                                     body)

    def status(self, service: str) -> RolloutStatus:
        return rollout_status(self.read(service))

    def wait(self, service: str, timeout: float) -> RolloutStatus:
        """Poll until the rollout is complete; raise :class:`RolloutFailed` on the progress
        deadline or when ``timeout`` seconds pass first."""
        deadline = self.clock() + timeout
        last = ""
        while True:
            st = self.status(service)
            if st.message != last:
                self.log(f"{service}: {st.message}")
                last = st.message
            if st.done:
                return st
            if st.failed:
                raise RolloutFailed(st.message)
            if self.clock() >= deadline:
                raise RolloutFailed(f"{service}: rollout not complete after {timeout:g} s "
                                    f"({st.message})")
            self.sleep(self.poll_seconds)

    def upgrade(self, service: str, tag_or_image: str, timeout: float,
                rollback: bool = True) -> RolloutStatus:
        """Set one service's image (a tag, or a full image reference), wait for the rollout,
        and restore the previous image when it fails (``rollback=True``)."""
        previous = self.container_image(service)
        image = resolve_image(previous, tag_or_image)
        if image == previous:
            self.log(f"{service}: already at {image}")
        self.set_image(service, image)
        self.log(f"{service}: {previous} -> {image}")
        try:
            return self.wait(service, timeout)
        except RolloutFailed as failure:
            if not rollback:
                raise
            self.log(f"{service}: rollout failed ({failure}); restoring {previous}")
            self.set_image(service, previous,
                           cause=f"ffhquv deploy: automatic rollback from {image}")
            try:
                self.wait(service, timeout)
            except RolloutFailed as again:
                raise RollbackFailed(f"{failure}; the rollback to {previous} failed too: "
                                     f"{again}") from again
            raise RolledBack(f"{failure}; rolled back to {previous}") from failure

    def rollback(self, service: str, to_revision: int | None = None) -> int:
        """``kubectl rollout undo``: put back the pod template of an earlier revision (the one
        before the current, or ``to_revision``) from its ReplicaSet. Returns that revision."""
        name = deployment_name(service)
        dep = self.read(service)
        current = int((dep.metadata.annotations or {}).get(REVISION, "0") or 0)
        selector = ",".join(f"{k}={v}" for k, v in
                            sorted((dep.spec.selector.match_labels or {}).items()))
        rss = self.apps.list_namespaced_replica_set(self.namespace, label_selector=selector).items
        owned = {}
        for rs in rss:
            refs = rs.metadata.owner_references or []
            if any(r.uid == dep.metadata.uid and r.kind == "Deployment" for r in refs):
                rev = int((rs.metadata.annotations or {}).get(REVISION, "0") or 0)
                owned[rev] = rs
        if to_revision is None:
            earlier = [r for r in owned if r < current]
            if not earlier:
                raise RolloutFailed(f"{name}: no earlier revision to roll back to "
                                    f"(current {current}, known {sorted(owned)})")
            to_revision = max(earlier)
        if to_revision not in owned:
            raise RolloutFailed(f"{name}: revision {to_revision} not found "
                                f"(known {sorted(owned)})")
        template = self.apps.api_client.sanitize_for_serialization(owned[to_revision].spec.template)
        template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
        ops = [{"op": "replace", "path": "/spec/template", "value": template},
               {"op": "add", "path": "/metadata/annotations/" + CHANGE_CAUSE.replace("/", "~1"),
                "value": f"ffhquv deploy rollback {service} --to-revision {to_revision}"}]
        if not dep.metadata.annotations:
            ops[1] = {"op": "add", "path": "/metadata/annotations",
                      "value": {CHANGE_CAUSE: ops[1]["value"]}}
        self.apps.patch_namespaced_deployment(name, self.namespace, ops)
        self.log(f"{service}: rolled back to revision {to_revision}")
        return to_revision

    def statuses(self, services: Iterable[str] = SERVICES) -> list[RolloutStatus]:
        return [self.status(s) for s in services]


class RolledBack(RolloutFailed):
    """The rollout failed and the previous image is serving again."""


class RollbackFailed(RolloutFailed):
    """The rollout failed and so did the rollback."""


def api_client_from_config(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ``ApiClient`` from a kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)
    or, inside a pod, from the service account."""
    from kubernetes import client, config

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException:
        if kubeconfig:
            raise
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ffhquv deploy",
                                 description="Render the k8s manifests and roll out services.")
    sub = ap.add_subparsers(dest="action", required=True)

    def cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--namespace", "-n", default=None,
                       help="namespace (default: the overlay's, else 'ffhquv')")
        p.add_argument("--overlay", default=None,
                       help="overlay name (dev, dev-cpu, prod) or folder, for the namespace "
                            "and the image repository")
        p.add_argument("--kubeconfig", default=None)
        p.add_argument("--context", default=None)

    p = sub.add_parser("render", help="print the manifests of an overlay (kubectl kustomize)")
    p.add_argument("overlay", help="overlay name or kustomization folder")
    p.add_argument("-o", "--output", default=None, help="write to this file instead of stdout")

    p = sub.add_parser("set-image", help="roll one service to a new image tag")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("tag", help="image tag, sha256:<digest>, or a full image reference")
    cluster_args(p)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for readiness")
    p.add_argument("--no-wait", action="store_true", help="patch and return")
    p.add_argument("--no-rollback", action="store_true",
                   help="leave a failed rollout as it is")

    p = sub.add_parser("wait", help="wait for a service's rollout to complete")
    p.add_argument("service", choices=SERVICES)
    cluster_args(p)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--rollback", action="store_true",
                   help="roll back to the previous revision when the rollout fails")

    p = sub.add_parser("rollback", help="restore an earlier revision of a service")
    p.add_argument("service", choices=SERVICES)
    cluster_args(p)
    p.add_argument("--to-revision", type=int, default=None)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--no-wait", action="store_true")

    p = sub.add_parser("status", help="rollout state of the services")
    p.add_argument("service", nargs="?", choices=SERVICES)
    cluster_args(p)
    return ap


def _overlay_deployment(overlay: str, service: str) -> Obj | None:
    for obj in build(overlay_dir(overlay)):
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == deployment_name(service):
            return obj
    return None


def main(argv: list[str] | None = None, *, api_client: Any = None,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """``ffhquv deploy ...``; returns the exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or bad usage (argparse printed why)
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.action == "render":
            text = render(overlay_dir(args.overlay))
            if args.output:
                Path(args.output).write_text(text)
            else:
                sys.stdout.write(text)
            return 0
        namespace = args.namespace
        overlay_dep = None
        service = getattr(args, "service", None)
        if args.overlay:
            overlay_dep = _overlay_deployment(args.overlay, service or "gateway")
            if namespace is None and overlay_dep is not None:
                namespace = overlay_dep["metadata"].get("namespace")
        namespace = namespace or DEFAULT_NAMESPACE
    except (KustomizeError, ValueError) as e:
        print(f"ffhquv deploy: {e}", file=sys.stderr)
        return 2

    from kubernetes.client.exceptions import ApiException

    try:
        api = api_client or api_client_from_config(args.kubeconfig, args.context)
        d = Deployer(api, namespace, sleep=sleep)
        if args.action == "set-image":
            target = args.tag
            if overlay_dep is not None:  # the overlay names the image repository
                target = resolve_image(
                    overlay_dep["spec"]["template"]["spec"]["containers"][0]["image"], target)
            elif "/" not in target:
                image_with_tag("x", target)  # validate before touching the cluster
            if args.no_wait:
                image = resolve_image(d.container_image(args.service), target)
                d.set_image(args.service, image)
                print(f"{args.service}: image set to {image}")
                return 0
            st = d.upgrade(args.service, target, args.timeout, rollback=not args.no_rollback)
            print(st.message)
            return 0
        if args.action == "wait":
            try:
                st = d.wait(args.service, args.timeout)
            except RolloutFailed as e:
                if not args.rollback:
                    raise
                rev = d.rollback(args.service)
                try:
                    d.wait(args.service, args.timeout)
                except RolloutFailed as again:
                    raise RollbackFailed(f"{e}; rollback to revision {rev} failed: {again}") \
                        from again
                raise RolledBack(f"{e}; rolled back to revision {rev}") from e
            print(st.message)
            return 0
        if args.action == "rollback":
            rev = d.rollback(args.service, args.to_revision)
            if not args.no_wait:
                d.wait(args.service, args.timeout)
            print(f"{args.service}: at revision {rev}")
            return 0
        if args.action == "status":
            rows = d.statuses([args.service] if args.service else SERVICES)
            print(f"{'SERVICE':<10} {'REV':>4} {'READY':>7} {'UP-TO-DATE':>10} "
                  f"{'AVAILABLE':>9}  IMAGE  STATE")
            for st in rows:
                print(f"{st.name.removeprefix('ffhquv-'):<10} {st.revision or '-':>4} "
                      f"{st.ready}/{st.desired:<5} {st.updated:>10} {st.available:>9}  "
                      f"{','.join(st.images)}  {st.message}")
            return 0 if all(st.done for st in rows) else 1
    except RollbackFailed as e:
        print(f"ffhquv deploy: {e}", file=sys.stderr)
        return 3
    except RolloutFailed as e:
        print(f"ffhquv deploy: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"ffhquv deploy: {e}", file=sys.stderr)
        return 2
    except ApiException as e:
        print(f"ffhquv deploy: Kubernetes API error {e.status} {e.reason}: {e.body}",
              file=sys.stderr)
        return 4
    raise AssertionError(args.action)


if __name__ == "__main__":
    raise SystemExit(main())
