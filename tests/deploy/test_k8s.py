"""deploy/k8s/: the kustomize base and its example overlay render (kubectl kustomize, when the machine
has kubectl), every manifest validates against the Kubernetes JSON schemas offline
(kubernetes-validate, strict: an unknown field fails), and the workloads run the Procfile's roles
through the entrypoint, as non-root, with probes, resources and the two database roles."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import (
    ENV_EXAMPLE,
    K8S_BASE,
    K8S_OVERLAYS,
    ONE_SHOT_ROLES,
    env_entries,
    k8s_base_documents,
    k8s_by_kind,
    kustomization,
    pod_spec,
    procfile,
    workloads,
)
from tests.test_docs import environment_reads

# The oldest Kubernetes still commonly run, and the newest the schemas know.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
WEB_PROBE_HEADERS = {"Host"}
RUN_AS_USER = 10001  # deploy/Dockerfile's USER
OWNER_SECRET = "ordinaut-db-owner"


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl (its kustomize) is not installed here; the manifests are checked one by one")
    return found


def render(directory: str) -> list[dict[str, Any]]:
    done = subprocess.run([_kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_errors(document: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{document['kind']}/{document['metadata']['name']}: {'/'.join(map(str, error.path))}: {error.message}"]
    return []


def containers(document: dict[str, Any], *, init: bool = False) -> list[dict[str, Any]]:
    spec = pod_spec(document)
    found: list[dict[str, Any]] = list(spec["containers"])
    return found + list(spec.get("initContainers", [])) if init else found


def test_every_resource_of_the_base_exists_and_parses() -> None:
    resources = kustomization(K8S_BASE)["resources"]
    assert resources
    for resource in resources:
        assert (K8S_BASE / resource).is_file(), resource
    kinds = {doc["kind"] for doc in k8s_base_documents()}
    assert {"Deployment", "Job", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds
    listed = {path.name for path in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(resources), "a manifest in the folder that kustomization.yaml does not list"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_base_validates_against_the_kubernetes_schemas(version: str) -> None:
    errors = [error for doc in k8s_base_documents() for error in schema_errors(doc, version)]
    assert errors == []


def test_strict_validation_catches_an_unknown_field() -> None:
    deployment = copy.deepcopy(k8s_by_kind(k8s_base_documents(), "Deployment")["ordinaut-worker"])
    deployment["spec"]["replica"] = 3
    assert schema_errors(deployment, K8S_VERSIONS[-1])


def test_the_base_and_the_overlay_render_and_validate() -> None:
    base = render(str(K8S_BASE))
    names = sorted((doc["kind"], doc["metadata"]["name"]) for doc in base)
    assert names == sorted((doc["kind"], doc["metadata"]["name"]) for doc in k8s_base_documents())
    for doc in base:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ordinaut"
    for overlay in sorted(path for path in K8S_OVERLAYS.iterdir() if (path / "kustomization.yaml").exists()):
        rendered = render(str(overlay))
        errors = [error for doc in rendered for version in K8S_VERSIONS for error in schema_errors(doc, version)]
        assert errors == [], overlay.name
        images = {c["image"] for doc in workloads(rendered) for c in containers(doc, init=True)}
        assert len(images) == 1, f"{overlay.name}: one image for every container, not {images}"
        assert images != {"ordinaut"}, f"{overlay.name} names the image in its registry"
        placeholders = [doc["metadata"]["name"] for doc in rendered if "change-me" in yaml.safe_dump(doc)]
        assert not placeholders, f"{overlay.name} would apply the base's example secrets: {placeholders}"


def test_each_procfile_role_is_a_deployment_running_it_through_the_entrypoint() -> None:
    deployments = k8s_by_kind(k8s_base_documents(), "Deployment")
    by_role: dict[str, str] = {}
    for name, doc in deployments.items():
        [container] = containers(doc)
        assert "command" not in container, f"{name}: the image's entrypoint runs the role"
        [role] = container["args"]
        by_role[role] = name
        assert doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == role
    assert sorted(by_role) == sorted(procfile())
    [job] = k8s_by_kind(k8s_base_documents(), "Job").values()
    assert [c["args"] for c in containers(job)] == [sorted(ONE_SHOT_ROLES)]
    for doc in deployments.values():
        for init in pod_spec(doc).get("initContainers", []):
            assert init["args"] == ["wait-migrated"]


def test_beat_runs_twice_and_the_workers_have_a_budget_and_an_autoscaler() -> None:
    documents = k8s_base_documents()
    deployments = k8s_by_kind(documents, "Deployment")
    assert deployments["ordinaut-beat"]["spec"]["replicas"] == 2
    worker_labels = deployments["ordinaut-worker"]["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb
        for pdb in k8s_by_kind(documents, "PodDisruptionBudget").values()
        if pdb["spec"]["selector"]["matchLabels"].items() <= worker_labels.items()
    ]
    assert budgets, "no PodDisruptionBudget covers the workers"
    [hpa] = k8s_by_kind(documents, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ordinaut-worker"}


def test_selectors_match_their_pods() -> None:
    documents = k8s_base_documents()
    pods = {
        name: doc["spec"]["template"]["metadata"]["labels"]
        for name, doc in k8s_by_kind(documents, "Deployment").items()
    }
    for name, doc in k8s_by_kind(documents, "Deployment").items():
        assert doc["spec"]["selector"]["matchLabels"].items() <= pods[name].items(), name
    for name, service in k8s_by_kind(documents, "Service").items():
        matched = [pod for pod, labels in pods.items() if service["spec"]["selector"].items() <= labels.items()]
        assert matched == [name], f"Service {name} selects {matched}"
        [container] = containers(k8s_by_kind(documents, "Deployment")[name])
        ports = {port["name"] for port in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port['targetPort']}"


def test_pods_run_as_non_root_with_a_read_only_root_and_limits() -> None:
    for doc in workloads(k8s_base_documents()):
        name = doc["metadata"]["name"]
        spec = pod_spec(doc)
        assert spec["automountServiceAccountToken"] is False, name
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] == RUN_AS_USER, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in containers(doc, init=True):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert resources["requests"]["cpu"], name
            assert resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name
            # Python's tempfile (the worker's metrics files, among others) needs a writable /tmp.
            [tmp] = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], name


def _config() -> dict[str, str]:
    [config] = k8s_by_kind(k8s_base_documents(), "ConfigMap").values()
    data: dict[str, str] = config["data"]
    return data


def test_web_probes_ask_health_live_and_ready_as_an_allowed_host() -> None:
    [container] = containers(k8s_by_kind(k8s_base_documents(), "Deployment")["ordinaut-web"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    allowed = _config()["ALLOWED_HOSTS"].split(",")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        headers = {header["name"]: header["value"] for header in container[kind]["httpGet"]["httpHeaders"]}
        assert set(headers) == WEB_PROBE_HEADERS, kind
        assert headers["Host"] in allowed, f"{kind} sends Host {headers['Host']}, not in ALLOWED_HOSTS"


def test_the_other_processes_are_probed_through_the_entrypoint() -> None:
    for name, doc in k8s_by_kind(k8s_base_documents(), "Deployment").items():
        [container] = containers(doc)
        role = container["args"][0]
        if role in ("web", "flower"):
            assert "httpGet" in container["livenessProbe"], name
            continue
        assert container["livenessProbe"]["exec"]["command"] == ["/app/deploy/entrypoint.sh", "check", role], name


def test_config_and_secrets_hold_known_settings_and_secrets_stay_secret() -> None:
    documents = k8s_base_documents()
    secrets = k8s_by_kind(documents, "Secret")
    known = set(env_entries(ENV_EXAMPLE))
    config = set(_config())
    app_secrets = set(secrets["ordinaut-secrets"]["stringData"])
    assert config <= known, f"ConfigMap keys no setting reads: {sorted(config - known)}"
    assert app_secrets <= known, f"Secret keys no setting reads: {sorted(app_secrets - known)}"
    assert not config & app_secrets, "a key in both the ConfigMap and the Secret"
    assert {"SECRET_KEY", "DATABASE_URL", "FLOWER_BASIC_AUTH"} <= app_secrets
    assert set(secrets[OWNER_SECRET]["stringData"]) == {"OWNER_DATABASE_URL"}
    app = urlsplit(secrets["ordinaut-secrets"]["stringData"]["DATABASE_URL"])
    owner = urlsplit(secrets[OWNER_SECRET]["stringData"]["OWNER_DATABASE_URL"])
    assert app.username != owner.username, "two roles"
    assert app.path == owner.path, "one database"
    every_interface = "0.0.0.0"  # noqa: S104 (a pod's loopback is not reachable by probes or Services)
    assert _config()["ORDINAUT_HOST"] == every_interface


def _secret_refs(container: dict[str, Any]) -> set[str]:
    return {source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source}


def test_only_the_migrate_job_sees_the_owner() -> None:
    for doc in workloads(k8s_base_documents()):
        for container in containers(doc, init=True):
            sees_owner = OWNER_SECRET in _secret_refs(container)
            assert sees_owner == (container["args"] == ["migrate"]), doc["metadata"]["name"]
            assert "ordinaut-secrets" in _secret_refs(container)
            assert {"configMapRef": {"name": "ordinaut-config"}} in container["envFrom"]


def test_worker_beat_and_events_declare_their_metrics_port() -> None:
    # The port each process serves its metrics on is the setting's default (the ConfigMap sets no
    # other), on every interface of the pod.
    defaults = environment_reads()
    assert _config()["ORDINAUT_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    checked = []
    for name, doc in k8s_by_kind(k8s_base_documents(), "Deployment").items():
        [container] = containers(doc)
        role = container["args"][0]
        setting = f"ORDINAUT_METRICS_PORT_{role.upper()}"
        if setting not in defaults:
            continue
        assert setting not in _config(), name
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        assert ports.get("metrics") == defaults[setting], f"{name}: metrics port, {setting}"
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(defaults[setting]), name
        checked.append(role)
    assert sorted(checked) == ["beat", "events", "worker"]


def test_web_and_flower_listen_where_the_config_says() -> None:
    deployments = k8s_by_kind(k8s_base_documents(), "Deployment")
    for name, setting in (("ordinaut-web", "ORDINAUT_PORT"), ("ordinaut-flower", "FLOWER_PORT")):
        [container] = containers(deployments[name])
        [port] = container["ports"]
        assert str(port["containerPort"]) == _config()[setting], name
