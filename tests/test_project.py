"""Project sanity: migrations match the models, deploy checks pass, settings refuse unsafe setups."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from ordinaut_site.celery import app
from runs.services import STEP_JOB_NAME

BASE_DIR = Path(__file__).resolve().parents[1]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=full_env, text=True, capture_output=True, timeout=120
    )


@pytest.mark.django_db
def test_migrations_match_models() -> None:
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_deploy_checks_pass_with_production_settings() -> None:
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="x" * 64 + "-production-like-secret-key-for-the-deploy-check",
        SECURE_SSL="1",
        ALLOWED_HOSTS="ordinaut.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_secret_key_without_debug_is_a_clear_error() -> None:
    result = _manage("check")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_without_secret_key_warns_loudly() -> None:
    result = _manage("check", DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert "INSECURE development key" in result.stderr


def test_celery_at_least_once_baseline() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is True
    from django.conf import settings

    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > settings.ORDINAUT_MAX_STEP_TIMEOUT_S + settings.ORDINAUT_MAX_COUNTDOWN_S


def test_step_job_is_registered_under_the_name_runs_dispatches() -> None:
    app.loader.import_default_modules()
    assert STEP_JOB_NAME in app.tasks
