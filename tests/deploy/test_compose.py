"""deploy/docker-compose.yml: valid against the compose spec's JSON schema, every Ordinaut service a
role of the one image (the Procfile's roles and migrate), health checks, start order, scalable
workers, two beats, Redis that keeps its data, the owner's credentials only where they belong, and
Prometheus and Grafana wired to the files of deploy/."""

from __future__ import annotations

import copy
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.files import COMPOSE, DEPLOY, ENV_EXAMPLE, ONE_SHOT_ROLES, env_values, procfile, yaml_documents

IMAGE = "${ORDINAUT_IMAGE:-ordinaut:latest}"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def compose() -> dict[str, Any]:
    [document] = yaml_documents(COMPOSE)
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def ordinaut_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services().items() if service.get("image") == IMAGE}


def compose_schema() -> dict[str, Any]:
    # The compose spec's schema as check-jsonschema vendors it (requirements/dev.in): offline.
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_spec() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_catches_a_misspelt_key() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["helthcheck"] = broken["services"]["worker"].pop("healthcheck")
    assert any("helthcheck" in error for error in schema_errors(broken))


def test_every_role_runs_in_one_service_of_the_one_image() -> None:
    roles = {name: service["command"] for name, service in ordinaut_services().items()}
    for name, command in roles.items():
        assert isinstance(command, list), name
        assert len(command) == 1, f"{name}: the command is one entrypoint role, not {command}"
    by_role = sorted(command[0] for command in roles.values())
    assert by_role == sorted([*procfile(), *ONE_SHOT_ROLES]), "each Procfile role (and migrate) exactly once"
    for name, service in ordinaut_services().items():
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_long_running_services_have_health_checks_through_the_entrypoint() -> None:
    for name, service in services().items():
        if name == "migrate":
            assert "healthcheck" not in service
            assert service["restart"] == "no", "a one-shot job is not restarted once it succeeded"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name, service in ordinaut_services().items():
        if name == "migrate":
            continue
        role = service["command"][0]
        assert service["healthcheck"]["test"] == ["CMD", "/app/deploy/entrypoint.sh", "check", role], name


def test_depends_on_names_services_and_conditions_they_can_meet() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends = service.get("depends_on", {})
        entries = (
            depends.items() if isinstance(depends, dict) else ((d, {"condition": "service_started"}) for d in depends)
        )
        for target, rule in entries:
            assert target in all_services, f"{name} depends on {target}, which does not exist"
            condition = rule["condition"]
            assert condition in CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], (
                    f"{name} waits for {target} to be healthy; it has no check"
                )
            if condition == "service_completed_successfully":
                assert all_services[target].get("restart") == "no", f"{target} must be a one-shot job"


def test_everything_that_touches_the_database_waits_for_migrate() -> None:
    for name, service in ordinaut_services().items():
        if service["command"][0] in ("web", "worker", "beat", "events"):
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    assert services()["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_workers_scale_and_beat_runs_twice() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker, "`--scale worker=N` needs no fixed name"
    assert "ports" not in worker, "`--scale worker=N` needs no fixed host port"
    for name, service in ordinaut_services().items():
        assert "container_name" not in service, name
    beats = [service for service in ordinaut_services().values() if service["command"] == ["beat"]]
    assert sum(service.get("deploy", {}).get("replicas", 1) for service in beats) == 2


def test_redis_keeps_its_data_and_never_evicts() -> None:
    redis = services()["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_the_owner_credentials_reach_postgres_and_migrate_only() -> None:
    for name, service in services().items():
        files = service.get("env_file", [])
        if name in ("postgres", "migrate"):
            assert "owner.env" in files, name
        else:
            assert "owner.env" not in files, f"{name} must not see the owner's password"
    for name, service in ordinaut_services().items():
        assert service["env_file"][0] == ".env", name
    # Later env files win: migrate's OWNER_DATABASE_URL comes from owner.env, DATABASE_URL from .env.
    assert services()["migrate"]["env_file"] == [".env", "owner.env"]


def test_published_ports_are_on_loopback() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def _host_path(volume: str) -> Path | None:
    source = volume.split(":", 1)[0]
    return (COMPOSE.parent / source).resolve() if source.startswith(".") else None


def test_bind_mounts_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            path = _host_path(volume)
            if path is not None:
                assert path.exists(), f"{name} mounts {volume}: {path} does not exist"
    named = set(compose()["volumes"])
    used = {v.split(":", 1)[0] for s in services().values() for v in s.get("volumes", []) if _host_path(v) is None}
    assert used == named


def test_prometheus_reads_the_config_and_rules_of_deploy_prometheus() -> None:
    prometheus = services()["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    rule_files = config.get("rule_files", [])
    assert rule_files, "prometheus.yml loads no rules"
    for rule_file in rule_files:
        # Relative to the config file, inside the mounted folder.
        relative = Path(rule_file).relative_to("/etc/prometheus") if rule_file.startswith("/") else Path(rule_file)
        assert (DEPLOY / "prometheus" / relative).is_file(), rule_file
    assert (DEPLOY / "prometheus" / "rules.yml").is_file()


def test_grafana_provisions_the_prometheus_source_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_target = Path(mounts["./grafana/ordinaut.json"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090", "the compose service's name and port"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "ordinaut.yml").read_text())["providers"]
    assert Path(provider["options"]["path"]) == dashboard_target.parent
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == str(dashboard_target)


def _datasource_uids(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and isinstance(source.get("uid"), str) and not source["uid"].startswith("$"):
            found.add(source["uid"])
        for value in node.values():
            found |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= _datasource_uids(value)
    return found


def test_the_dashboard_names_the_provisioned_data_source() -> None:
    path = DEPLOY / "grafana" / "ordinaut.json"
    if not path.exists():
        pytest.fail("deploy/grafana/ordinaut.json, which the compose file mounts, does not exist")
    dashboard = json.loads(path.read_text())
    [source] = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert _datasource_uids(dashboard) <= {source["uid"]}, "panels name a data source Grafana is not given"


def test_ports_agree_with_the_settings_the_processes_read() -> None:
    # The published container ports and Prometheus's targets are the ports env.example makes the
    # processes listen on.
    settings = env_values(ENV_EXAMPLE)
    listens = {
        "web": settings["ORDINAUT_PORT"],
        "flower": settings["FLOWER_PORT"],
        "worker": settings["ORDINAUT_METRICS_PORT_WORKER"],
        "beat": settings["ORDINAUT_METRICS_PORT_BEAT"],
        "events": settings["ORDINAUT_METRICS_PORT_EVENTS"],
    }
    assert settings["ORDINAUT_HOST"] == settings["ORDINAUT_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    for name in ("web", "flower"):
        [published] = services()[name]["ports"]
        assert published.rsplit(":", 1)[1] == listens[name], name
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for discovery in job.get("dns_sd_configs", []):
            for target in discovery["names"]:
                assert target in ordinaut_services(), f"{job['job_name']} scrapes {target}, not a service"
                assert str(discovery["port"]) == listens[target], f"{job['job_name']}: port of {target}"
                scraped.add(target)
        for static in job.get("static_configs", []):
            for address in static["targets"]:
                target, port = address.rsplit(":", 1)
                assert target in ordinaut_services(), f"{job['job_name']} scrapes {target}, not a service"
                assert port == listens[target], f"{job['job_name']}: port of {target}"
                scraped.add(target)
    assert scraped == {"web", "worker", "beat", "events"}
    # The web is scraped by its service name, which Django must answer (Prometheus sends it as Host).
    assert "web" in env_values(ENV_EXAMPLE)["ALLOWED_HOSTS"].split(",")
