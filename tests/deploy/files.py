"""The deploy/ files as the tests read them: the Procfile's roles, the env files, the compose file,
the Kubernetes manifests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ordinaut_site import envfile

BASE_DIR = Path(__file__).resolve().parents[2]
DEPLOY = BASE_DIR / "deploy"
PROCFILE = DEPLOY / "Procfile"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
ENV_EXAMPLE = DEPLOY / "env.example"
OWNER_ENV_EXAMPLE = DEPLOY / "owner.env.example"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_OVERLAYS = DEPLOY / "k8s" / "overlays"
# Roles of deploy/entrypoint.sh besides the Procfile's: one-shot jobs.
ONE_SHOT_ROLES = {"migrate"}


def procfile() -> dict[str, str]:
    """role -> command, as honcho reads deploy/Procfile."""
    roles: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            role, _, command = line.partition(":")
            roles[role.strip()] = command.strip()
    return roles


def yaml_documents(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


# --- env files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    active: bool  # a KEY=VALUE line; False: a commented `# KEY=VALUE`, left unset
    comment: str  # the comment line just above it
    line: int


_ENTRY = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def env_entries(path: Path) -> dict[str, EnvEntry]:
    """Every variable of an env file, set or commented out, with the comment line above it."""
    entries: dict[str, EnvEntry] = {}
    previous = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        match = _ENTRY.match(line)
        if match:
            commented, name, value = match.groups()
            assert name not in entries, f"{path.name}:{number}: {name} is listed twice"
            entries[name] = EnvEntry(name, value, not commented, previous, number)
            previous = ""
        elif line.startswith("#"):
            previous = line.lstrip("#").strip()
        else:
            previous = ""
    return entries


def env_values(path: Path) -> dict[str, str]:
    """What the file sets, read by the application's own parser."""
    return envfile.parse(path.read_text(), path.name)


# --- Kubernetes --------------------------------------------------------------------------------


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def k8s_base_documents() -> list[dict[str, Any]]:
    """Every resource the base's kustomization.yaml lists, in order."""
    documents: list[dict[str, Any]] = []
    for resource in kustomization(K8S_BASE)["resources"]:
        documents.extend(yaml_documents(K8S_BASE / resource))
    return documents


def k8s_by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = document["spec"]["template"]["spec"]
    return spec


def workloads(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] in ("Deployment", "Job")]
