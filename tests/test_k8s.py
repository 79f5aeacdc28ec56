"""deploy/k8s/ (issue 25): every object validates against the Kubernetes schemas (kubernetes-validate,
which ships them: no network), and the pieces fit each other (Service -> Triton pods, the client's
server URL -> the Service, the volumes and paths the export Job writes -> what Triton and watch read)."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
from conftest import require_module

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
VERSION = "1.30"


@pytest.fixture(scope="module")
def kv():
    return require_module("kubernetes_validate", extra="dev")


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    import yaml

    out = {}
    for f in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_every_object_validates_offline_against_the_kubernetes_schemas(kv, objects):
    from kubernetes_validate.utils import schema_contents

    # The schemas are files inside the package, read from disk: nothing is fetched.
    assert schema_contents("kubernetes-json-schema/v1.30.0-local-strict/deployment-apps-v1.json", VERSION)
    assert set(objects) == {("PersistentVolumeClaim", "tbedge-models"), ("Job", "tbedge-export-triton"),
                            ("Deployment", "tbedge-triton"), ("Service", "tbedge-triton"),
                            ("Deployment", "tbedge-watch"), ("PersistentVolumeClaim", "tbedge-incoming"),
                            ("PersistentVolumeClaim", "tbedge-results")}
    for doc in objects.values():
        kv.validate(doc, VERSION, strict=True)  # raises on any error, unknown fields included


@pytest.mark.parametrize("break_it", [
    lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="eight thousand"),
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=["Always"]),
    lambda d: d["spec"].update(replica=1),  # a typo: strict schemas know every field
    lambda d: d["spec"].pop("selector"),
])
def test_the_validator_rejects_a_broken_deployment(kv, objects, break_it):
    doc = copy.deepcopy(objects[("Deployment", "tbedge-triton")])
    break_it(doc)
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, VERSION, strict=True)


def _pod(objects, kind: str, name: str) -> dict:
    return objects[(kind, name)]["spec"]["template"]["spec"]


def _mounts(container: dict) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def test_the_pieces_fit_together(objects):
    svc = objects[("Service", "tbedge-triton")]
    triton = objects[("Deployment", "tbedge-triton")]
    labels = triton["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert triton["spec"]["selector"]["matchLabels"].items() <= labels.items()
    server = _pod(objects, "Deployment", "tbedge-triton")["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert ports[grpc["targetPort"]] == 8001
    assert "--model-repository=/models/repo" in server["args"] and _mounts(server)["/models"] == "models"

    watch = _pod(objects, "Deployment", "tbedge-watch")["containers"][0]
    env = {e["name"]: e["value"] for e in watch["env"]}
    assert env["TBEDGE_TRITON_SERVER"] == f"grpc://{svc['metadata']['name']}:{grpc['port']}"
    args = watch["args"]
    assert args[:2] == ["tbedge", "watch"] and args[args.index("--backend") + 1] == "triton"
    assert args[args.index("--engine") + 1] == "/models/bundle" and {"/models", "/incoming", "/results"} <= set(
        _mounts(watch))

    job = _pod(objects, "Job", "tbedge-export-triton")["containers"][0]
    script = " ".join(job["args"])
    assert "tbedge export-triton /models/bundle --out /models/repo" in script
    assert "tbedge check-triton /models/repo --engine /models/bundle" in script
    init = _pod(objects, "Deployment", "tbedge-triton")["initContainers"][0]
    assert "tbedge check-triton /models/repo" in " ".join(init["command"])
    for kind, name in (("Job", "tbedge-export-triton"), ("Deployment", "tbedge-triton"),
                       ("Deployment", "tbedge-watch")):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in _pod(objects, kind, name)["volumes"]}
        assert claims <= {n for k, n in objects if k == "PersistentVolumeClaim"}


def test_the_commands_are_real_tbedge_commands(objects):
    """The arguments the manifests give tbedge parse with tbedge's own CLI (no typo waits for a cluster)."""
    from typer.testing import CliRunner

    from tbedge.cli.common import app

    watch = _pod(objects, "Deployment", "tbedge-watch")["containers"][0]["args"][1:]
    job_script = " ".join(_pod(objects, "Job", "tbedge-export-triton")["containers"][0]["args"])
    export = next(shlex.split(c.strip()) for c in job_script.split(";") if "export-triton" in c)[1:]
    for argv in (watch, export):
        r = CliRunner().invoke(app, [*argv[:1], "--help"])
        assert r.exit_code == 0, r.output
        opts = [a for a in argv if a.startswith("--")]
        assert opts and all(o in r.output for o in opts), (opts, r.output)
