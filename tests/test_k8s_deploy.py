"""`ffhquv deploy` rollouts through the real `kubernetes` client (ApiClient serialisation,
urllib3 transport, kubeconfig loading) against a small fake API server on loopback HTTP that
plays the Deployment controller: generations, ReplicaSets with revisions, pods that become
ready or not."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client  # noqa: E402

from ffhquv_deploy import deploy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NS = "ffhquv"
REV = "deployment.kubernetes.io/revision"
SMP = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def _template_hash(template: dict) -> str:
    t = copy.deepcopy(template)
    t.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
    return hashlib.sha256(json.dumps(t, sort_keys=True).encode()).hexdigest()[:10]


class FakeCluster:
    """The apps/v1 Deployment and ReplicaSet endpoints of one namespace, with a controller
    that advances a rollout one step per read. Pods of images containing ``broken`` never
    become ready (a failing readiness probe); ``deadline_images`` make the controller report
    ProgressDeadlineExceeded."""

    def __init__(self, deployments: list[dict], replicas: int = 2):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.deps: dict[str, dict] = {}
        self.rss: dict[str, dict] = {}
        self.deadline_images: set[str] = set()
        for i, d in enumerate(deployments):
            d = copy.deepcopy(d)
            meta = d["metadata"]
            meta.update(uid=f"uid-{i}", generation=1, resourceVersion="1",
                        annotations={REV: "1"})
            d["spec"]["replicas"] = replicas
            d["status"] = {"observedGeneration": 1, "replicas": replicas,
                           "updatedReplicas": replicas, "readyReplicas": replicas,
                           "availableReplicas": replicas,
                           "conditions": [{"type": "Progressing", "status": "True",
                                           "reason": "NewReplicaSetAvailable"}]}
            self.deps[meta["name"]] = d
            self._replicaset_for(d)
            d["_step"] = 99  # settled

    # -- controller ---------------------------------------------------------------------------
    def _replicaset_for(self, dep: dict) -> dict:
        h = _template_hash(dep["spec"]["template"])
        owned = [rs for rs in self.rss.values()
                 if rs["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]]
        top = max([int(rs["metadata"]["annotations"][REV]) for rs in owned], default=0)
        name = f"{dep['metadata']['name']}-{h}"
        rs = self.rss.get(name)
        if rs is None:
            template = copy.deepcopy(dep["spec"]["template"])
            template["metadata"]["labels"]["pod-template-hash"] = h
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": name, "namespace": NS, "uid": f"rs-{h}",
                               "labels": dict(template["metadata"]["labels"]),
                               "annotations": {},
                               "ownerReferences": [{"apiVersion": "apps/v1",
                                                    "kind": "Deployment",
                                                    "name": dep["metadata"]["name"],
                                                    "uid": dep["metadata"]["uid"],
                                                    "controller": True}]},
                  "spec": {"replicas": 0, "selector": copy.deepcopy(dep["spec"]["selector"]),
                           "template": template}}
            self.rss[name] = rs
        # the ReplicaSet of the applied template becomes the newest revision
        if int(rs["metadata"]["annotations"].get(REV, 0)) != top or not owned:
            rs["metadata"]["annotations"][REV] = str(top + 1)
        dep["metadata"]["annotations"][REV] = rs["metadata"]["annotations"][REV]
        return rs

    def _advance(self, dep: dict) -> None:
        st, n = dep["status"], dep["spec"]["replicas"]
        if dep["_step"] == 99:
            return
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        if dep["_step"] == 0:  # the controller observes the new generation
            st.update(observedGeneration=dep["metadata"]["generation"], replicas=n,
                      updatedReplicas=0, readyReplicas=n, availableReplicas=n)
            st["conditions"][0]["reason"] = "ReplicaSetUpdated"
        elif image in self.deadline_images:
            st["conditions"][0].update(status="False", reason="ProgressDeadlineExceeded",
                                       message="ReplicaSet has timed out progressing.")
        elif "broken" in image:  # maxSurge 1, maxUnavailable 0: one new pod, never ready
            st.update(replicas=n + 1, updatedReplicas=1, readyReplicas=n, availableReplicas=n)
        elif dep["_step"] == 1:
            st.update(replicas=n + 1, updatedReplicas=n, readyReplicas=n - 1,
                      availableReplicas=n - 1)
        else:
            st.update(replicas=n, updatedReplicas=n, readyReplicas=n, availableReplicas=n)
            st["conditions"][0]["reason"] = "NewReplicaSetAvailable"
            dep["_step"] = 99
            return
        dep["_step"] += 1

    # -- HTTP ---------------------------------------------------------------------------------
    def handle(self, method: str, url: str, headers: dict, body: bytes) -> tuple[int, dict]:
        headers = {k.lower(): v for k, v in headers.items()}
        u = urlparse(url)
        parts = u.path.strip("/").split("/")
        payload = json.loads(body) if body else None
        with self.lock:
            self.requests.append({"method": method, "path": u.path, "query": parse_qs(u.query),
                                  "content_type": headers.get("content-type"),
                                  "authorization": headers.get("authorization"),
                                  "body": payload})
            if parts[:4] != ["apis", "apps", "v1", "namespaces"] or parts[4] != NS:
                return 404, _status(404, "NotFound", f"no route {u.path}")
            resource = parts[5]
            if resource == "replicasets" and method == "GET" and len(parts) == 6:
                sel = parse_qs(u.query).get("labelSelector", [""])[0]
                items = [rs for rs in self.rss.values()
                         if deploy.label_selector_matches(sel, rs["metadata"]["labels"])]
                return 200, {"apiVersion": "apps/v1", "kind": "ReplicaSetList",
                             "metadata": {}, "items": items}
            if resource != "deployments" or len(parts) != 7:
                return 404, _status(404, "NotFound", f"no route {u.path}")
            dep = self.deps.get(parts[6])
            if dep is None:
                return 404, _status(404, "NotFound",
                                    f'deployments.apps "{parts[6]}" not found')
            if method == "GET":
                out = self._public(dep)
                self._advance(dep)
                return 200, out
            if method == "PATCH":
                ctype = headers.get("content-type")
                if ctype == SMP:
                    new = deploy.strategic_merge(dep, payload, "Deployment")
                elif ctype == JSON_PATCH:
                    new = deploy.json_patch(dep, payload)
                else:
                    return 415, _status(415, "UnsupportedMediaType", str(ctype))
                if new["spec"] != dep["spec"]:
                    new["metadata"]["generation"] += 1
                    new["_step"] = 0
                    self._replicaset_for(new)
                new["metadata"]["resourceVersion"] = str(
                    int(new["metadata"]["resourceVersion"]) + 1)
                self.deps[parts[6]] = new
                return 200, self._public(new)
        return 405, _status(405, "MethodNotAllowed", method)

    @staticmethod
    def _public(dep: dict) -> dict:
        return {k: copy.deepcopy(v) for k, v in dep.items() if not k.startswith("_")}

    def patches(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "PATCH"]

    def image(self, name: str) -> str:
        return self.deps[name]["spec"]["template"]["spec"]["containers"][0]["image"]


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@pytest.fixture()
def cluster():
    docs = deploy.build(REPO / "k8s" / "overlays" / "prod")
    fake = FakeCluster([d for d in docs if d["kind"] == "Deployment"])

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            n = int(self.headers.get("Content-Length") or 0)
            code, out = fake.handle(self.command, self.path, dict(self.headers),
                                    self.rfile.read(n) if n else b"")
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture()
def kubeconfig(cluster, tmp_path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
        "users": [{"name": "ci", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "ci",
                                                   "namespace": NS}}]}))
    return str(path)


def _fast_sleep(_seconds: float) -> None:
    time.sleep(0.002)


def _run(kubeconfig: str, *args: str) -> int:
    return deploy.main([*args, "--kubeconfig", kubeconfig], sleep=_fast_sleep)


def _deployer(cluster) -> deploy.Deployer:
    now = [0.0]
    api = client.ApiClient(client.Configuration(host=cluster.url))
    return deploy.Deployer(api, NS, poll_seconds=5.0,
                           sleep=lambda s: now.__setitem__(0, now[0] + s),
                           clock=lambda: now[0], log=lambda m: None)


def test_set_image_rolls_only_that_service(cluster, kubeconfig, capsys):
    before = {n: copy.deepcopy(d) for n, d in cluster.deps.items()}
    assert _run(kubeconfig, "set-image", "fitter", "0.2.0", "--overlay", "prod",
                "--timeout", "30") == 0
    assert "successfully rolled out" in capsys.readouterr().out
    (patch,) = cluster.patches()
    assert patch["path"] == f"/apis/apps/v1/namespaces/{NS}/deployments/ffhquv-fitter"
    assert patch["content_type"] == SMP
    assert patch["authorization"] == "Bearer t0ken"
    assert patch["body"] == {
        "metadata": {"annotations": {
            "kubernetes.io/change-cause":
                "ffhquv deploy set-image fitter registry.example.com/ffhquv/fitter:0.2.0"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "fitter", "image": "registry.example.com/ffhquv/fitter:0.2.0"}]}}}}
    # every request went to the fitter's Deployment; the rest of the cluster is untouched
    assert {r["path"] for r in cluster.requests} == {patch["path"]}
    for name, dep in cluster.deps.items():
        if name != "ffhquv-fitter":
            assert dep == before[name]
    fitter = cluster.deps["ffhquv-fitter"]
    assert cluster.image("ffhquv-fitter") == "registry.example.com/ffhquv/fitter:0.2.0"
    assert fitter["metadata"]["generation"] == 2
    assert fitter["metadata"]["annotations"][REV] == "2"
    assert fitter["status"]["availableReplicas"] == fitter["status"]["updatedReplicas"] == 2
    # apart from the image, the pod template is the one of the overlay
    old_t = before["ffhquv-fitter"]["spec"]["template"]
    new_t = copy.deepcopy(fitter["spec"]["template"])
    new_t["spec"]["containers"][0]["image"] = old_t["spec"]["containers"][0]["image"]
    assert new_t == old_t


def test_failed_readiness_rolls_back_to_the_previous_image(cluster, kubeconfig, capsys):
    assert _run(kubeconfig, "set-image", "detector", "0.2.0-broken", "--timeout", "0.3") == 1
    err = capsys.readouterr().err
    assert "rolled back to registry.example.com/ffhquv/detector:0.1.0" in err
    assert "1 out of 2 new replicas have been updated" in err
    first, second = cluster.patches()
    assert first["body"]["spec"]["template"]["spec"]["containers"] == [
        {"name": "detector", "image": "registry.example.com/ffhquv/detector:0.2.0-broken"}]
    assert second["path"] == first["path"]
    assert second["content_type"] == SMP
    assert second["body"] == {
        "metadata": {"annotations": {"kubernetes.io/change-cause":
                                     "ffhquv deploy: automatic rollback from "
                                     "registry.example.com/ffhquv/detector:0.2.0-broken"}},
        "spec": {"template": {"spec": {"containers": [
            {"name": "detector", "image": "registry.example.com/ffhquv/detector:0.1.0"}]}}}}
    dep = cluster.deps["ffhquv-detector"]
    assert cluster.image("ffhquv-detector") == "registry.example.com/ffhquv/detector:0.1.0"
    assert dep["status"]["availableReplicas"] == 2 and dep["status"]["replicas"] == 2
    # the old ReplicaSet was reused and became the newest revision, as Kubernetes does
    assert dep["metadata"]["annotations"][REV] == "3"
    assert len([rs for rs in cluster.rss if rs.startswith("ffhquv-detector-")]) == 2


def test_no_rollback_leaves_the_failed_rollout(cluster, kubeconfig):
    assert _run(kubeconfig, "set-image", "eyeball", "0.2.0-broken", "--timeout", "0.2",
                "--no-rollback") == 1
    assert len(cluster.patches()) == 1
    assert cluster.image("ffhquv-eyeball").endswith(":0.2.0-broken")


def test_rollback_to_previous_and_to_a_revision(cluster, kubeconfig):
    for tag in ("0.2.0", "0.3.0"):
        assert _run(kubeconfig, "set-image", "exporter", tag, "--timeout", "30") == 0
    assert cluster.deps["ffhquv-exporter"]["metadata"]["annotations"][REV] == "3"
    assert _run(kubeconfig, "rollback", "exporter", "--timeout", "30") == 0
    patch = cluster.patches()[-1]
    assert patch["content_type"] == JSON_PATCH
    assert patch["path"] == f"/apis/apps/v1/namespaces/{NS}/deployments/ffhquv-exporter"
    rs_list = [r for r in cluster.requests if r["path"].endswith("/replicasets")]
    assert rs_list[-1]["query"]["labelSelector"] == [
        "app.kubernetes.io/component=exporter,app.kubernetes.io/name=ffhquv"]
    replace, cause = patch["body"]
    assert replace["op"] == "replace" and replace["path"] == "/spec/template"
    assert "pod-template-hash" not in replace["value"]["metadata"]["labels"]
    assert replace["value"]["spec"]["containers"][0]["image"] == \
        "registry.example.com/ffhquv/exporter:0.2.0"
    assert cause == {"op": "add", "path": "/metadata/annotations/kubernetes.io~1change-cause",
                     "value": "ffhquv deploy rollback exporter --to-revision 2"}
    assert cluster.image("ffhquv-exporter") == "registry.example.com/ffhquv/exporter:0.2.0"
    assert _run(kubeconfig, "rollback", "exporter", "--to-revision", "1", "--timeout", "30") == 0
    assert cluster.image("ffhquv-exporter") == "registry.example.com/ffhquv/exporter:0.1.0"
    assert _run(kubeconfig, "rollback", "exporter", "--to-revision", "42") == 1


def test_wait_with_rollback_restores_the_previous_revision(cluster, kubeconfig):
    assert _run(kubeconfig, "set-image", "gateway", "0.2.0-broken", "--no-wait") == 0
    assert cluster.image("ffhquv-gateway").endswith(":0.2.0-broken")
    assert _run(kubeconfig, "wait", "gateway", "--timeout", "0.3", "--rollback") == 1
    assert cluster.image("ffhquv-gateway") == "registry.example.com/ffhquv/gateway:0.1.0"
    assert cluster.patches()[-1]["content_type"] == JSON_PATCH
    assert _run(kubeconfig, "wait", "gateway", "--timeout", "30") == 0


def test_wait_observes_generation_and_replicas(cluster):
    d = _deployer(cluster)
    d.set_image("fitter", "registry.example.com/ffhquv/fitter:0.2.0")
    seen = []
    d.log = seen.append
    st = d.wait("fitter", timeout=60)
    assert st.done and st.updated == st.available == 2 and st.observed_generation == 2
    assert seen == [
        "fitter: waiting for the deployment spec update to be observed",
        "fitter: 0 out of 2 new replicas have been updated",
        "fitter: 1 old replicas are pending termination",
        "fitter: deployment ffhquv-fitter successfully rolled out",
    ]


def test_progress_deadline_fails_without_waiting_for_the_timeout(cluster):
    d = _deployer(cluster)
    cluster.deadline_images.add("registry.example.com/ffhquv/fitter:0.2.0")
    with pytest.raises(deploy.RolledBack, match="exceeded its progress deadline"):
        d.upgrade("fitter", "0.2.0", timeout=3600)
    assert cluster.image("ffhquv-fitter") == "registry.example.com/ffhquv/fitter:0.1.0"


def test_timeout_uses_the_clock(cluster):
    d = _deployer(cluster)
    d.set_image("fitter", "registry.example.com/ffhquv/fitter:0.2.0-broken")
    t0 = d.clock()
    with pytest.raises(deploy.RolloutFailed, match="not complete after 60 s"):
        d.wait("fitter", timeout=60)
    assert 60 <= d.clock() - t0 <= 65


def test_status_and_errors(cluster, kubeconfig, capsys):
    assert _run(kubeconfig, "status") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["SERVICE", "REV"]
    assert [line.split()[0] for line in out[1:]] == list(deploy.SERVICES)
    assert all("successfully rolled out" in line for line in out[1:])
    n = len(cluster.requests)
    for bad in ("latest", "has space", ".x", "-x"):
        assert _run(kubeconfig, "set-image", "fitter", bad) == 2, bad
    assert len(cluster.requests) == n, "a bad tag never reaches the cluster"
    assert _run(kubeconfig, "status", "fitter", "--namespace", "elsewhere") == 4
    assert "404" in capsys.readouterr().err


def test_image_references():
    assert deploy.image_with_tag("reg:5000/a/b:1.0", "2.0") == "reg:5000/a/b:2.0"
    assert deploy.image_with_tag("reg:5000/a/b@sha256:" + "0" * 64, "sha256:" + "1" * 64) \
        == "reg:5000/a/b@sha256:" + "1" * 64
    assert deploy.resolve_image("a/b:1", "reg.io/x/b:3") == "reg.io/x/b:3"
    for bad in ("latest", "reg.io/x/b", "reg.io/x/b:latest"):
        with pytest.raises(ValueError):
            deploy.resolve_image("a/b:1", bad)
    with pytest.raises(ValueError):
        deploy.deployment_name("frontend")
