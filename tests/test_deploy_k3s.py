"""deploy/k3s, built by kustomize (``kubectl kustomize``, offline) and checked object by object.

kubectl turns the built YAML into JSON offline (``kubectl label --local -o json``), so no YAML
library and no cluster are needed. The pods' effective environment (generated ConfigMap + Secret)
is fed to :func:`intents_mm.config.load_config`: the base refuses to start without real secrets,
and starts with them on each service's runbook port.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from intents_mm.config import DEFAULT_PORTS, SERVICES, VAR_BY_NAME, VARIABLES, load_config
from intents_mm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
K3S = ROOT / "deploy" / "k3s"
NAMESPACE = "intents-mm"
PART_OF = ("app.kubernetes.io/part-of", "intents-mm")
SECRET_VARS = {v.name for v in VARIABLES if v.secret}
IN_CLUSTER = {"NATS_URL": "nats://nats:4222", "CONTROL_API_HOST": "0.0.0.0", "INTENTS_MM_VAR_DIR": "/app/var"}


def kubectl() -> str:
    tool = shutil.which("kubectl")
    if tool is None:
        pytest.skip("kubectl is not installed (it is not in Debian's packages); deploy/k3s not built")
    return tool


def run(args: list[str], stdin: str | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env["KUBECONFIG"] = "/dev/null"  # never reach a cluster
    result = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def to_objects(tool: str, yaml_text: str) -> list[dict[str, Any]]:
    """Kubernetes YAML -> objects, with kubectl's own decoder and no server (`label --local`)."""
    text = run([tool, "label", "--local", "-f", "-", "-o", "json", "intents-mm-test-unused-"], yaml_text)
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = decoder.raw_decode(text, i)
        objects.extend(obj["items"] if obj.get("kind") == "List" else [obj])
    return objects


def build(tool: str, directory: Path) -> list[dict[str, Any]]:
    return to_objects(tool, run([tool, "kustomize", str(directory)]))


@pytest.fixture(scope="module")
def tool() -> str:
    return kubectl()


@pytest.fixture(scope="module")
def objects(tool: str) -> list[dict[str, Any]]:
    return build(tool, K3S)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def generated(objects: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(prefix + "-")]
    return obj


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from envFrom (ConfigMap, Secret) and env, in Kubernetes order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(secret_values(one(objects, "Secret", source["secretRef"]["name"])))
    for item in container.get("env") or []:
        env[item["name"]] = item.get("value", "")
    return env


def test_everything_lives_in_the_namespace(objects: list[dict[str, Any]]) -> None:
    one(objects, "Namespace", NAMESPACE)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1]


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_per_service(objects: list[dict[str, Any]], name: str) -> None:
    port = DEFAULT_PORTS[name]
    deployment = one(objects, "Deployment", name)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    labels = spec["template"]["metadata"]["labels"]
    assert labels[PART_OF[0]] == PART_OF[1]
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    pod = pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod.get("automountServiceAccountToken") is False
    (container,) = pod["containers"]
    assert container["image"] == "intents-mm:latest"
    assert container["args"] == ["run", name]
    assert "command" not in container  # the image's ENTRYPOINT (intents-mm) stays
    assert [p["containerPort"] for p in container["ports"]] == [port]
    named = {p.get("name"): p["containerPort"] for p in container["ports"]}
    for probe_kind in ("livenessProbe", "readinessProbe"):
        probe = container[probe_kind]["httpGet"]
        assert probe["path"] == "/healthz"
        assert named.get(probe["port"], probe["port"]) == port

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/app/var"} <= writable

    service = one(objects, "Service", name)
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, port)]


def test_replicas_are_explained_next_to_them() -> None:
    for name in SERVICES:
        text = (K3S / "base" / "services" / f"{name}.yaml").read_text(encoding="utf-8")
        (line,) = [line for line in text.splitlines() if line.strip().startswith("replicas:")]
        value, _, comment = line.partition("#")
        assert value.split() == ["replicas:", "1"]
        assert len(comment.strip()) > 20, f"{name}: say next to replicas why it must stay 1"


@pytest.mark.parametrize("name", SERVICES)
def test_pod_environment_is_valid_only_with_real_secrets(objects: list[dict[str, Any]], name: str) -> None:
    (container,) = pod_spec(one(objects, "Deployment", name))["containers"]
    env = container_env(objects, container)
    for needed in ("NATS_URL", "POSTGRES_URL", "CONTROL_API_HOST", "CONTROL_API_TOKEN"):
        assert needed in env, f"{name} gets no {needed}"
    unknown = set(env) - set(VAR_BY_NAME)
    assert not unknown, f"{name}: variables unknown to intents_mm.config: {sorted(unknown)}"
    # The template Secret is empty: the service refuses to bind 0.0.0.0 without a token.
    with pytest.raises(ConfigError, match="CONTROL_API_TOKEN"):
        load_config(env, dotenv=None)
    real = {**env, "CONTROL_API_TOKEN": "t", "POSTGRES_URL": "postgresql://mm:pw@db.internal:5432/intents"}
    loaded = load_config(real, dotenv=None)
    assert loaded.port(name) == DEFAULT_PORTS[name]
    assert loaded["CONTROL_API_HOST"] == "0.0.0.0"


def test_configmap_has_every_non_secret_variable(objects: list[dict[str, Any]]) -> None:
    data = generated(objects, "ConfigMap", "intents-mm-config")["data"]
    expected = {v.name: IN_CLUSTER.get(v.name, v.default or "") for v in VARIABLES if not v.secret}
    missing = [f"{k}={v}" for k, v in expected.items() if k not in data]
    assert not missing, f"add to deploy/k3s/base/config.env: {missing}"
    assert set(data) == set(expected), f"not variables (or secrets): {sorted(set(data) - set(expected))}"
    assert data == expected, "config.env must hold the .env.example defaults (and the in-cluster values)"


def test_secret_template_holds_placeholders_only(objects: list[dict[str, Any]], tool: str) -> None:
    secret = generated(objects, "Secret", "intents-mm-secrets")
    values = secret_values(secret)
    assert set(values) == SECRET_VARS
    assert all(v == "" for v in values.values()), "the committed Secret template must not hold values"

    example = to_objects(tool, (K3S / "secret.example.yaml").read_text(encoding="utf-8"))
    (manifest,) = example
    assert manifest["kind"] == "Secret"
    assert manifest["metadata"]["name"] == "intents-mm-secrets"
    assert manifest["metadata"]["namespace"] == NAMESPACE
    assert secret_values(manifest) == dict.fromkeys(SECRET_VARS, "")


def test_migration_job(objects: list[dict[str, Any]]) -> None:
    job = one(objects, "Job", "intents-mm-migrate")
    pod = pod_spec(job)
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["image"] == "intents-mm:latest"
    assert container["args"] == ["migrate"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = container_env(objects, container)
    assert "POSTGRES_URL" in env


def test_nats_statefulset_with_jetstream_on_a_volume(objects: list[dict[str, Any]]) -> None:
    nats = one(objects, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 1
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (container,) = pod_spec(nats)["containers"]
    assert container["image"].startswith("nats:2.10")
    args = container["args"]
    assert "-js" in args
    store = args[args.index("-sd") + 1]
    assert {"name": claim["metadata"]["name"], "mountPath": store} in container["volumeMounts"]
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/healthz")
    assert pod_spec(nats)["securityContext"]["runAsNonRoot"] is True
    one(objects, "Service", nats["spec"]["serviceName"])

    # NATS_URL in the ConfigMap names this Service and its client port.
    url = urlparse(generated(objects, "ConfigMap", "intents-mm-config")["data"]["NATS_URL"])
    service = one(objects, "Service", str(url.hostname))
    assert service["spec"]["selector"].items() <= nats["spec"]["template"]["metadata"]["labels"].items()
    assert url.port in [p["port"] for p in service["spec"]["ports"]]


def test_network_policies(objects: list[dict[str, Any]]) -> None:
    policies = find(objects, "NetworkPolicy")
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open for the venues"
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny, "a default deny-ingress policy for the whole namespace"
    allow = [p for p in policies if p["spec"].get("ingress")]
    assert len(allow) == 1
    (rule,) = allow[0]["spec"]["ingress"]
    assert rule == {"from": [{"podSelector": {"matchLabels": {PART_OF[0]: PART_OF[1]}}}]}
    assert allow[0]["spec"]["podSelector"] == {}
    # Every pod carries the label, so services, NATS and the migration reach each other.
    for kind in ("Deployment", "StatefulSet", "Job"):
        for workload in find(objects, kind):
            assert workload["spec"]["template"]["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1]


@pytest.fixture
def overlay_copy(tmp_path: Path) -> Iterator[Path]:
    """deploy/k3s copied, with a filled overlays/production/secret.env (never in the work tree)."""
    copy = tmp_path / "k3s"
    shutil.copytree(K3S, copy)
    (copy / "overlays" / "production" / "secret.env").write_text(
        "NEAR_INTENTS_API_KEY=jwt-placeholder\n"
        "NEAR_INTENTS_SIGNER_PRIVATE_KEY=\n"
        "POSTGRES_URL=postgresql://mm:pw@db.internal:5432/intents\n"
        "CONTROL_API_TOKEN=overlay-token\n",
        encoding="utf-8",
    )
    yield copy / "overlays" / "production"


def test_production_overlay_supplies_the_real_secret(tool: str, overlay_copy: Path) -> None:
    objects = build(tool, overlay_copy)
    secret = generated(objects, "Secret", "intents-mm-secrets")
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret_values(secret)["CONTROL_API_TOKEN"] == "overlay-token"
    assert len(find(objects, "Secret")) == 1
    for name in SERVICES:
        (container,) = pod_spec(one(objects, "Deployment", name))["containers"]
        loaded = load_config(container_env(objects, container), dotenv=None)
        assert loaded["CONTROL_API_TOKEN"] == "overlay-token"
        assert loaded["POSTGRES_URL"] == "postgresql://mm:pw@db.internal:5432/intents"
        assert loaded.port(name) == DEFAULT_PORTS[name]


def test_overlay_secret_env_is_git_ignored() -> None:
    ignore = (K3S / "overlays" / "production" / ".gitignore").read_text(encoding="utf-8")
    assert "secret.env" in ignore.split()
    result = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k3s/overlays/production/secret.env"], cwd=ROOT, check=False
    )
    assert result.returncode == 0


def test_variable_names_in_manifests_are_known() -> None:
    """Every ``NAME=`` in the env files and every env ``name:`` in the manifests is a real variable."""
    names: set[str] = set()
    for path in [K3S / "base" / "config.env", K3S / "secret.env.example"]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                names.add(line.partition("=")[0].strip())
    for path in K3S.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"^\s*- ([A-Z][A-Z0-9_]+)=", text, flags=re.M))  # generator literals
        names.update(re.findall(r"^\s*- name: ([A-Z][A-Z0-9_]+)\s*$", text, flags=re.M))  # env entries
    assert names
    unknown = names - set(VAR_BY_NAME)
    assert not unknown, f"unknown variables in deploy/k3s: {sorted(unknown)}"
