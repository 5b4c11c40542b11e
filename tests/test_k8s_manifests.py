"""The Kubernetes manifests (k8s/): rendered by ffhquv_deploy's kustomize subset, identical to
`kubectl kustomize` where kubectl is installed, valid against the newest Kubernetes OpenAPI
schema that kubernetes-validate ships (strict), and checked for the deployment policy."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ffhquv_deploy import deploy
from ffhquv_deploy.deploy import KustomizeError, build, json_patch, label_selector_matches, render
from ffhquv_deploy.deploy import strategic_merge as smp

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
OVERLAYS = ("dev", "dev-cpu", "prod")
KUSTOMIZATIONS = (K8S / "base", *(K8S / "overlays" / o for o in OVERLAYS))
SERVICES = deploy.SERVICES
INTERNAL = ("detector", "fitter", "eyeball", "exporter")
FULL_NAMES = {
    "detector": "ffhquv.detector.v1.Detector",
    "fitter": "ffhquv.fitter.v1.Fitter",
    "eyeball": "ffhquv.eyeball.v1.Eyeball",
    "exporter": "ffhquv.exporter.v1.Exporter",
    "gateway": "ffhquv.gateway.v1.Reconstruction",
}
NAMESPACES = {"dev": "ffhquv-dev", "dev-cpu": "ffhquv-dev", "prod": "ffhquv"}
DRAIN_SECONDS = 10  # the servers drain in-flight calls for up to 10 s after SIGTERM
KUBECTL = shutil.which("kubectl")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, build(K8S / "overlays" / request.param)


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _by_name(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _kind(docs, kind)}


def _pod_spec(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def _containers(dep: dict) -> list[dict]:
    ps = _pod_spec(dep)
    return ps["containers"] + ps.get("initContainers", [])


def _matches(selector: dict, labels: dict) -> bool:
    """metav1.LabelSelector semantics (matchLabels AND matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        have, op, vals = labels.get(e["key"]), e["operator"], e.get("values") or []
        if (op == "In" and have not in vals) or (op == "NotIn" and have in vals) \
                or (op == "Exists" and have is None) or (op == "DoesNotExist" and have is not None):
            return False
    return True


def _quantity(q: str | int) -> float:
    s = str(q)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 1e3, "M": 1e6, "G": 1e9}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


# --- renderer == kubectl kustomize ------------------------------------------------------------

@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (the renderer needs none)")
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_render_matches_kubectl_kustomize(kdir):
    want = subprocess.run([KUBECTL, "kustomize", str(kdir)], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert render(kdir) == want


def test_render_cli_prints_the_overlay(capsys, tmp_path):
    assert deploy.main(["render", "prod"]) == 0
    out = capsys.readouterr().out
    assert out == render(K8S / "overlays" / "prod")
    docs = list(yaml.safe_load_all(out))
    assert len(docs) == len(build(K8S / "overlays" / "prod"))
    out_file = tmp_path / "d.yaml"
    assert deploy.main(["render", str(K8S / "overlays" / "dev"), "-o", str(out_file)]) == 0
    assert (tmp_path / "d.yaml").read_text() == render(K8S / "overlays" / "dev")
    assert deploy.main(["render", "no-such-overlay"]) == 2


# --- schema ---------------------------------------------------------------------------------

def test_schema_strict_newest_release(overlay):
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version()
    major, minor = (int(x) for x in version.split(".")[:2])
    assert (major, minor) >= (1, 33), f"kubernetes-validate ships only {version}"
    name, docs = overlay
    errors = []
    for d in docs:
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {e.message} at "
                          f"{'/'.join(str(p) for p in e.path)}")
    assert not errors, f"{name} against Kubernetes {version}:\n" + "\n".join(errors)


def test_schema_validation_catches_a_bad_field():
    kv = pytest.importorskip("kubernetes_validate")
    dep = copy.deepcopy(_by_name(build(K8S / "overlays" / "prod"), "Deployment")["ffhquv-fitter"])
    _containers(dep)[0]["readinessProbe"]["grpc"]["servce"] = "typo"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, kv.latest_version(), strict=True)


# --- policy ---------------------------------------------------------------------------------

def test_one_deployment_per_service_in_the_overlay_namespace(overlay):
    name, docs = overlay
    deps = _by_name(docs, "Deployment")
    assert sorted(deps) == sorted(f"ffhquv-{s}" for s in SERVICES)
    ns = NAMESPACES[name]
    assert [d["metadata"]["name"] for d in _kind(docs, "Namespace")] == [ns]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == ns, d["metadata"]["name"]
    for s in SERVICES:
        dep = deps[f"ffhquv-{s}"]
        assert _matches(dep["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
        (c,) = _pod_spec(dep)["containers"]
        assert c["name"] == s
        assert c["command"] == ["ffhquv", "serve", s]
        assert c["args"][:6] == ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"grpc": 50051, "metrics": 9090}


def test_gpu_only_on_the_fitter(overlay):
    name, docs = overlay
    for dep in _kind(docs, "Deployment"):
        svc = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        ps = _pod_spec(dep)
        gpus = [c["resources"].get(k, {}).get("nvidia.com/gpu") for c in _containers(dep)
                for k in ("requests", "limits")]
        tolerates = any(t.get("key") == "nvidia.com/gpu" for t in ps.get("tolerations", []))
        selects = "nvidia.com/gpu.present" in ps.get("nodeSelector", {})
        if svc == "fitter" and name != "dev-cpu":
            assert gpus == ["1", "1"], name
            assert tolerates and selects
            assert ps["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu",
                                          "operator": "Exists"}]
        else:
            assert gpus == [None, None], f"{name}: {svc} must not ask for a GPU"
            assert not tolerates and not selects, f"{name}: {svc} must not target GPU nodes"
    if name == "dev-cpu":
        fitter = _by_name(docs, "Deployment")["ffhquv-fitter"]
        assert _containers(fitter)[0]["args"][-2:] == ["--device", "cpu"]
        assert _containers(fitter)[0]["image"].endswith("-cpu")


def test_grpc_probes_on_every_container(overlay):
    _, docs = overlay
    for dep in _kind(docs, "Deployment"):
        svc = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in _containers(dep):
            rp, lp = c.get("readinessProbe"), c.get("livenessProbe")
            assert rp and lp, f"{svc}: readiness and liveness probes required"
            assert rp["grpc"] == {"port": 50051, "service": FULL_NAMES[svc]}
            assert lp["grpc"]["port"] == 50051 and lp["grpc"].get("service", "") == ""
            if svc == "fitter":  # the model load is covered by a startupProbe, not by liveness
                sp = c["startupProbe"]
                assert sp["grpc"] == {"port": 50051, "service": FULL_NAMES[svc]}
                assert sp["periodSeconds"] * sp["failureThreshold"] >= 300


def test_graceful_shutdown_outlasts_the_drain(overlay):
    _, docs = overlay
    for dep in _kind(docs, "Deployment"):
        grace = _pod_spec(dep)["terminationGracePeriodSeconds"]
        for c in _containers(dep):
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            assert grace > pre_stop + DRAIN_SECONDS, dep["metadata"]["name"]


def test_images_pinned_and_independent(overlay):
    name, docs = overlay
    images = {}
    for dep in _kind(docs, "Deployment"):
        for c in _containers(dep):
            ref = c["image"]
            repo, tag, digest = deploy._split_image(ref)
            assert tag or digest, f"{ref}: no tag"
            assert tag != "latest", ref
            assert c.get("imagePullPolicy") == "IfNotPresent"
            images[c["name"]] = repo
            if name == "prod":
                assert repo.startswith("registry.example.com/ffhquv/"), ref
    # one image repository per service: each service is versioned on its own
    assert len(set(images.values())) == len(SERVICES)


def test_resources_and_security_context(overlay):
    _, docs = overlay
    for dep in _kind(docs, "Deployment"):
        ps = _pod_spec(dep)
        psc = ps["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 1000
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert ps["automountServiceAccountToken"] is False
        mounts_tmp = {v["name"] for v in ps["volumes"] if "emptyDir" in v}
        for c in _containers(dep):
            req, lim = c["resources"]["requests"], c["resources"]["limits"]
            for r in ("cpu", "memory"):
                assert r in req and r in lim, f"{c['name']}: {r} request and limit"
                assert _quantity(req[r]) <= _quantity(lim[r]), f"{c['name']}: {r}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in mounts_tmp, "writable emptyDir on /tmp"


def test_services_headless_inside_and_routable_outside(overlay):
    name, docs = overlay
    svcs = _by_name(docs, "Service")
    deps = _by_name(docs, "Deployment")
    assert sorted(svcs) == sorted(deps)
    for s in SERVICES:
        svc = svcs[f"ffhquv-{s}"]
        matching = [n for n, d in deps.items()
                    if _matches({"matchLabels": svc["spec"]["selector"]},
                                d["spec"]["template"]["metadata"]["labels"])]
        assert matching == [f"ffhquv-{s}"]
        if s in INTERNAL:
            assert svc["spec"]["clusterIP"] == "None", f"{s} must be headless (round_robin DNS)"
        else:
            assert svc["spec"].get("clusterIP") != "None"
        container_ports = {p["name"] for p in _containers(deps[f"ffhquv-{s}"])[0]["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in container_ports
    cfg = _by_name(docs, "ConfigMap")["ffhquv-config"]["data"]
    ns = NAMESPACES[name]
    for s in INTERNAL:
        assert cfg[f"FFHQUV_{s.upper()}_ADDR"] == f"dns:///ffhquv-{s}.{ns}.svc.cluster.local:50051"
    if name == "prod":
        (ing,) = _kind(docs, "Ingress")
        assert ing["spec"]["tls"][0]["secretName"]
        assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] \
            == "GRPC"
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": "ffhquv-gateway", "port": {"name": "grpc"}}


def test_references_resolve(overlay):
    name, docs = overlay
    cms, secrets, pvcs = (_by_name(docs, k) for k in
                          ("ConfigMap", "Secret", "PersistentVolumeClaim"))
    sas = _by_name(docs, "ServiceAccount")
    # made out of band in prod
    external_secrets = {"ffhquv-auth", "ffhquv-internal"} if name == "prod" else set()
    for dep in _kind(docs, "Deployment"):
        ps = _pod_spec(dep)
        assert ps["serviceAccountName"] in sas
        for v in ps["volumes"]:
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
        for c in _containers(dep):
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in ps["volumes"]}
            for ef in c.get("envFrom", []):
                assert ef["configMapRef"]["name"] in cms
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets or ref["name"] in external_secrets
    gw = _containers(_by_name(docs, "Deployment")["ffhquv-gateway"])[0]
    assert any(e["name"] == "FFHQUV_AUTH_TOKEN" for e in gw["env"])
    # the internal token: sent by the gateway, required by every backend, one Secret for all
    for dname, dep in _by_name(docs, "Deployment").items():
        (tok,) = [e for e in _containers(dep)[0]["env"] if e["name"] == "FFHQUV_INTERNAL_TOKEN"]
        assert tok["valueFrom"]["secretKeyRef"] == {"name": "ffhquv-internal", "key": "token"}, \
            dname
    assert any(m["mountPath"] == "/data/artifacts" for m in gw["volumeMounts"])
    fitter = _containers(_by_name(docs, "Deployment")["ffhquv-fitter"])[0]
    (models,) = [m for m in fitter["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is True and models["mountPath"] == "/models"
    if name == "prod":
        assert "ffhquv-auth" not in secrets, "prod must not ship the placeholder token"
        assert "ffhquv-internal" not in secrets, "prod must not ship the placeholder token"
        assert pvcs["ffhquv-artifacts"]["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert secrets["ffhquv-auth"]["stringData"]["token"]
        assert secrets["ffhquv-internal"]["stringData"]["token"] \
            != secrets["ffhquv-auth"]["stringData"]["token"]


def test_autoscalers_and_disruption_budgets(overlay):
    name, docs = overlay
    deps = _by_name(docs, "Deployment")
    hpas = _by_name(docs, "HorizontalPodAutoscaler")
    if name.startswith("dev"):
        assert not hpas, "dev runs one replica of each service"
    else:
        assert sorted(hpas) == sorted(deps)
        for n, h in hpas.items():
            ref = h["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["apiVersion"]) == ("Deployment", "apps/v1")
            assert ref["name"] in deps
            assert 2 <= h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"]
            assert "replicas" not in deps[ref["name"]]["spec"], "the HPA owns the replica count"
            (m,) = h["spec"]["metrics"]
            if n == "ffhquv-fitter":
                assert m["type"] == "Pods"
                assert m["pods"]["metric"]["name"] == "ffhquv_inflight_fits"
                assert m["pods"]["target"]["type"] == "AverageValue"
            else:
                assert m == {"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
        for dep in deps.values():  # prod spreads each service over zones and nodes
            keys = {c["topologyKey"] for c in _pod_spec(dep)["topologySpreadConstraints"]}
            assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    pdbs = _by_name(docs, "PodDisruptionBudget")
    covered = []
    for n, pdb in pdbs.items():
        hits = [d for d, dep in deps.items()
                if _matches(pdb["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])]
        assert hits == [n], f"PDB {n} selects {hits}"
        assert pdb["spec"].get("maxUnavailable") == 1  # never blocks a drain, even at 1 replica
        covered += hits
    assert sorted(covered) == sorted(deps)


def _allowed(policies: list[dict], pod_labels: dict, port: str, src_labels: dict | None,
             src_ns_labels: dict) -> bool:
    """Is ingress to a pod on a named port allowed? NetworkPolicy semantics: a pod selected by
    any Ingress policy accepts only what some selecting policy allows."""
    selecting = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _matches(p["spec"]["podSelector"], pod_labels)]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            if rule.get("ports") and port not in {x["port"] for x in rule["ports"]}:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_ok = ("namespaceSelector" in peer
                         and _matches(peer["namespaceSelector"], src_ns_labels))
                same_ns = ("namespaceSelector" not in peer and src_ns_labels.get(
                    "kubernetes.io/metadata.name") == p["metadata"].get("namespace"))
                if "podSelector" in peer:
                    if (ns_ok or same_ns) and src_labels is not None \
                            and _matches(peer["podSelector"], src_labels):
                        return True
                elif ns_ok:
                    return True
    return False


def test_network_policies(overlay):
    name, docs = overlay
    pols = _kind(docs, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
               and not p["spec"].get("ingress") for p in pols), "default deny ingress"
    labels = {s: _by_name(docs, "Deployment")[f"ffhquv-{s}"]["spec"]["template"]["metadata"]
              ["labels"] for s in SERVICES}
    own_ns = {"kubernetes.io/metadata.name": NAMESPACES[name]}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    elsewhere = {"kubernetes.io/metadata.name": "default"}
    ingress_nginx = {"kubernetes.io/metadata.name": "ingress-nginx"}
    for s in INTERNAL:
        assert _allowed(pols, labels[s], "grpc", labels["gateway"], own_ns)
        for other in SERVICES:
            if other != "gateway":
                assert not _allowed(pols, labels[s], "grpc", labels[other], own_ns), (other, s)
        assert not _allowed(pols, labels[s], "grpc", {}, own_ns)
        assert not _allowed(pols, labels[s], "grpc", labels["gateway"], elsewhere)
        assert not _allowed(pols, labels[s], "grpc", None, monitoring)
    for s in SERVICES:
        assert _allowed(pols, labels[s], "metrics", None, monitoring), s
        assert not _allowed(pols, labels[s], "metrics", {}, elsewhere), s
    assert _allowed(pols, labels["gateway"], "grpc", None, ingress_nginx)
    assert _allowed(pols, labels["gateway"], "grpc", {}, elsewhere) == (name != "prod")


# --- renderer details (checked against kubectl where it is installed) ------------------------

def test_strategic_merge_lists_and_directives():
    dep = {"kind": "Deployment", "spec": {"template": {"spec": {
        "containers": [{"name": "a", "image": "a", "env": [
            {"name": "E1", "value": "1"}, {"name": "E2", "value": "2"},
            {"name": "E3", "value": "3"}]}, {"name": "b", "image": "b"}],
        "volumes": [{"name": "v1", "emptyDir": {}}, {"name": "v2", "emptyDir": {}}],
        "tolerations": [{"key": "x", "operator": "Exists"}]}}}}
    patch = {"spec": {"template": {"spec": {
        "containers": [{"name": "a", "env": [{"name": "E2", "value": "22"},
                                             {"name": "E0", "value": "0"},
                                             {"name": "E3", "$patch": "delete"}]}],
        "volumes": [{"name": "v2", "emptyDir": None, "configMap": {"name": "c"}}],
        "tolerations": [{"key": "y", "operator": "Exists"}]}}}}
    out = smp(dep, patch, "Deployment")["spec"]["template"]["spec"]
    assert out["containers"][0]["env"] == [{"name": "E2", "value": "22"},
                                           {"name": "E0", "value": "0"},
                                           {"name": "E1", "value": "1"}]
    assert [c["name"] for c in out["containers"]] == ["a", "b"]
    assert out["volumes"] == [{"name": "v2", "configMap": {"name": "c"}},
                              {"name": "v1", "emptyDir": {}}]
    assert out["tolerations"] == [{"key": "y", "operator": "Exists"}]  # no merge key: replaced
    assert dep["spec"]["template"]["spec"]["volumes"][1] == {"name": "v2", "emptyDir": {}}
    svc = {"kind": "Service", "spec": {"ports": [{"port": 1, "name": "a"}, {"port": 2}]}}
    assert smp(svc, {"spec": {"ports": [{"port": 2, "name": "b"}]}}, "Service")["spec"][
        "ports"] == [{"port": 2, "name": "b"}, {"port": 1, "name": "a"}]
    assert smp({"a": {"b": 1, "c": 2}}, {"a": {"$patch": "replace", "d": 3}}) == {"a": {"d": 3}}
    with pytest.raises(KustomizeError, match="retainKeys"):
        smp({"a": {}}, {"a": {"$retainKeys": ["x"]}})


def test_json_patch_ops():
    doc = {"a": {"b/c": [1, 2]}, "x": 1}
    out = json_patch(doc, [
        {"op": "add", "path": "/a/b~1c/-", "value": 3},
        {"op": "add", "path": "/a/b~1c/0", "value": 0},
        {"op": "replace", "path": "/x", "value": 2},
        {"op": "copy", "from": "/x", "path": "/y"},
        {"op": "move", "from": "/y", "path": "/z"},
        {"op": "test", "path": "/z", "value": 2},
        {"op": "remove", "path": "/a/b~1c/1"},
    ])
    assert out == {"a": {"b/c": [0, 2, 3]}, "x": 2, "z": 2}
    assert doc == {"a": {"b/c": [1, 2]}, "x": 1}
    for bad in ({"op": "remove", "path": "/nope"}, {"op": "test", "path": "/x", "value": 9},
                {"op": "replace", "path": "/a/b~1c/7", "value": 0}, {"op": "frob", "path": "/x"}):
        with pytest.raises(KustomizeError):
            json_patch(doc, [bad])


def test_label_selectors():
    labels = {"app": "ffhquv", "tier": "fitter"}
    assert label_selector_matches("app=ffhquv,tier!=gateway", labels)
    assert label_selector_matches("tier in (detector, fitter)", labels)
    assert label_selector_matches("tier notin (gateway),app", labels)
    assert label_selector_matches("!missing", labels)
    assert not label_selector_matches("tier==gateway", labels)
    assert not label_selector_matches("tier in (a,b),app=ffhquv", labels)
    with pytest.raises(KustomizeError):
        label_selector_matches("tier ~ x", labels)


def _write(d: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return d


DEP = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: example.org:5000/team/web:1.0
        args: [a]
      - name: side
        image: side@sha256:0000000000000000000000000000000000000000000000000000000000000000
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {text: "line 1\\nline 2\\n", flag: "true", n: "5", s: "it's", "~": x, a9: x, a10: x,
       a_1: x, a1: x, "on": "on", "yes": "2001-12-14", q: "'q'", "- x": "&x", e: "1e3"}
"""


def test_kustomize_features_on_a_synthetic_tree(tmp_path):
    _write(tmp_path / "base", {
        "kustomization.yaml": "resources: [app.yaml]\ncommonLabels: {team: a}\n",
        "app.yaml": DEP})
    over = _write(tmp_path / "over", {
        "kustomization.yaml": """namespace: demo
resources: [../base]
labels:
- pairs: {env: x}
  includeTemplates: true
images:
- {name: example.org:5000/team/web, newTag: "2.0"}
- name: side
  newName: reg.io/side
  digest: sha256:1111111111111111111111111111111111111111111111111111111111111111
patches:
- target: {kind: Deployment, name: "w.*"}
  patch: |-
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: b}
- patch: |-
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      ports: [{port: 80, targetPort: 9090}]
"""})
    docs = build(over)
    dep = _by_name(docs, "Deployment")["web"]
    assert dep["metadata"]["namespace"] == "demo"
    assert dep["metadata"]["labels"] == {"app": "web", "team": "a", "env": "x"}
    assert dep["spec"]["selector"]["matchLabels"] == {"app": "web", "team": "a"}
    assert dep["spec"]["template"]["metadata"]["labels"] == {"app": "web", "team": "a",
                                                             "env": "x"}
    c0, c1 = dep["spec"]["template"]["spec"]["containers"]
    assert c0["image"] == "example.org:5000/team/web:2.0" and c0["args"] == ["a", "b"]
    assert c1["image"] == "reg.io/side@sha256:" + "1" * 64
    assert _by_name(docs, "Service")["web"]["spec"]["ports"] == [{"port": 80,
                                                                   "targetPort": 9090}]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Deployment"]
    if KUBECTL:
        want = subprocess.run([KUBECTL, "kustomize", str(over)], capture_output=True, text=True,
                              timeout=60, check=True).stdout
        assert render(over) == want


@pytest.mark.parametrize("kustomization, message", [
    ("resources: [app.yaml]\nnamePrefix: x-\n", "unsupported kustomize fields"),
    ("resources: [missing.yaml]\n", "not found"),
    ("resources: [app.yaml, app.yaml]\n", "duplicate"),
    ("resources: [https://github.com/x/y]\n", "remote"),
    ("resources: [app.yaml]\npatches:\n- patch: '[{op: remove, path: /x}]'\n", "needs a target"),
    ("resources: [app.yaml]\npatches:\n- patch: '{kind: Service, metadata: {name: nope}}'\n",
     "matches no resource"),
])
def test_kustomize_errors(tmp_path, kustomization, message):
    _write(tmp_path, {"kustomization.yaml": kustomization, "app.yaml": DEP})
    with pytest.raises(KustomizeError, match=message):
        build(tmp_path)


# --- docs/deploy.md ---------------------------------------------------------------------------

def test_deploy_docs_are_exact():
    import re
    import shlex

    text = (REPO / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    yaml_docs = [d for lang, b in blocks if lang == "yaml" for d in yaml.safe_load_all(b) if d]
    kinds = {d["kind"] for d in yaml_docs}
    assert {"PodMonitor", "ConfigMap", "Role", "Pod"} <= kinds
    (adapter,) = [d for d in yaml_docs if d["kind"] == "ConfigMap"]
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    hpa = _by_name(build(K8S / "overlays" / "prod"), "HorizontalPodAutoscaler")["ffhquv-fitter"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["name"]["as"] == metric and metric in rule["seriesQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    (pm,) = [d for d in yaml_docs if d["kind"] == "PodMonitor"]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["metadata"]["namespace"] == "monitoring"  # the namespace the NetworkPolicy admits
    # every `ffhquv deploy ...` command in the docs parses
    parser = deploy.build_parser()
    commands = [line.split("#")[0].strip() for lang, b in blocks if lang == "sh"
                for line in b.splitlines() if line.strip().startswith("ffhquv deploy ")]
    commands += re.findall(r"`(ffhquv deploy [\w-]+ [^`]+)`", text)
    parsed = 0
    for cmd in commands:
        argv = shlex.split(re.sub(r"\[[^\]]*\]", "", cmd).split(">")[0])[2:]
        if "|" in cmd or not argv or argv[0] not in {"render", "set-image", "wait", "rollback",
                                                     "status"}:
            continue
        parser.parse_args(argv)
        parsed += 1
    assert parsed >= 7
