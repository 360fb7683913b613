"""deploy/prometheus/ (scrape config, alert rules) and deploy/grafana/ordinaut.json (the dashboard):
well formed, and every series their PromQL names is exported by the running stack (scraped live
from the web, worker, beat and events consumer of tests/ops/conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from tests.ops.conftest import Samples, Stack

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "ordinaut.json"
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^\d+[smhdwy]$")

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan", "le"}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers,
    grouping clauses, ranges, numbers and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "", text)
    return {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text) if name.lower() not in PROMQL_KEYWORDS}


def family(series: str) -> str:
    """ordinaut_x_seconds_bucket, ordinaut_x_total -> ordinaut_x_seconds, ordinaut_x."""
    return re.sub(r"_(bucket|count|sum|total)$", "", series)


def exported(stack: Stack) -> set[str]:
    names: set[str] = set()
    for role in ("web", "worker", "beat", "events"):
        scraped: Samples = stack.scrape(role)
        names |= set(scraped)
    return names


def rule_list() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_series_names_are_read_from_promql() -> None:
    expr = 'sum by (le) (rate(ordinaut_x_bucket{status=~"a|b"}[5m])) / clamp_min(max(ordinaut_y), 1e-9) > 0.2'
    assert series_names(expr) == {"ordinaut_x_bucket", "ordinaut_y"}
    assert series_names("time() - max(ordinaut_z) > 30 or absent(ordinaut_w)") == {"ordinaut_z", "ordinaut_w"}


def test_every_alert_is_complete_and_says_what_it_means_and_what_to_do() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert groups
    assert all(group["name"] and group["rules"] for group in groups)
    rules = rule_list()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    assert len(rules) >= 12
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["expr"].strip(), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        description = rule["annotations"]["description"]
        assert len(description) > 120, f"{rule['alert']}: the description says what it means and what to do"
        read = {family(name) for name in series_names(rule["expr"])}
        assert read & {family(name) for name in re.findall(r"ordinaut_[a-z0-9_]+", description)}, (
            f"{rule['alert']}: the description names the series it reads"
        )


def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed; test_every_alert_is_complete_... checks the structure")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text(SCRAPE_CONFIG.read_text().replace("/etc/prometheus/rules.yml", str(RULES)))
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_scrape_config_reads_the_rules_and_every_process_on_its_default_port() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]  # where compose mounts this folder
    ports = {job["job_name"]: _port(job) for job in config["scrape_configs"]}
    assert ports == {
        "ordinaut-web": 8000,
        "ordinaut-worker": settings.ORDINAUT_METRICS_PORT_WORKER,
        "ordinaut-beat": settings.ORDINAUT_METRICS_PORT_BEAT,
        "ordinaut-events": settings.ORDINAUT_METRICS_PORT_EVENTS,
    }


def _port(job: dict[str, Any]) -> int:
    if "static_configs" in job:
        return int(job["static_configs"][0]["targets"][0].rsplit(":", 1)[1])
    return int(job["dns_sd_configs"][0]["port"])


def test_the_dashboard_is_well_formed_and_uses_the_provisioned_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    panels = dashboard["panels"]
    assert dashboard["uid"] == "ordinaut"
    assert dashboard["title"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["title"], panel
        assert panel["targets"], panel
        assert panel["datasource"]["uid"] == uid
        assert all(target["datasource"]["uid"] == uid and target["refId"] for target in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " ".join(panel["title"].lower() for panel in panels)
    for wanted in ("runs", "lateness", "queue", "workers", "beat", "lag", "tool call errors", "approvals"):
        assert wanted in titles, f"a panel about {wanted}"


def test_every_series_the_rules_and_the_dashboard_read_is_exported(stack: Stack) -> None:
    names = exported(stack)
    missing = {
        f"{rule['alert']}: {name}" for rule in rule_list() for name in series_names(rule["expr"]) if name not in names
    }
    missing |= {
        f"{title}: {name}" for title, expr in dashboard_exprs() for name in series_names(expr) if name not in names
    }
    assert not missing, sorted(missing)
