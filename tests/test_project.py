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


def _dev_key(var_dir: Path) -> str:
    result = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
        DEBUG="1",
        ORDINAUT_VAR_DIR=str(var_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "INSECURE development key" in result.stderr, "the warning stays loud"
    return result.stdout.strip().splitlines()[-1]  # after Django's "N objects imported" line


def test_debug_without_secret_key_generates_one_kept_under_var(tmp_path: Path) -> None:
    key = _dev_key(tmp_path / "var")
    assert len(key) >= 50
    assert "insecure" not in key, "a random key, not a constant shipped in the code"
    kept = tmp_path / "var" / "secret_key"
    assert kept.read_text().strip() == key
    assert kept.stat().st_mode & 0o777 == 0o600
    # Every process (web, worker, beat) and every restart sign with the same key: sessions hold.
    assert _dev_key(tmp_path / "var") == key
    assert _dev_key(tmp_path / "other-var") != key


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
