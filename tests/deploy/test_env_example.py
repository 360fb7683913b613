"""deploy/env.example lists every setting (docs/configuration.md's table and what settings.py reads,
both read afresh, so a new setting fails here until it is added), each with its comment and its
default, and the settings load from it; deploy/owner.env.example holds the owner alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.files import BASE_DIR, ENV_EXAMPLE, OWNER_ENV_EXAMPLE, env_entries, env_values
from tests.test_docs import _NOT_LITERAL, environment_reads, settings_table

# Variables only the test runner sets: listed, commented out, never set by a deployment.
TEST_ONLY = {"PYTEST_VERSION", "TEST_DATABASE_NAME"}
# Set to a placeholder that must be replaced.
SECRETS = {"SECRET_KEY", "DATABASE_URL", "FLOWER_BASIC_AUTH"}
PLACEHOLDER = "change-me"
OWNER_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "OWNER_DATABASE_URL"}


def known_settings() -> set[str]:
    return set(settings_table()) | set(environment_reads())


def _as_env(default: Any) -> str:
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, list):
        return ",".join(default)
    return str(default)


def declared_defaults() -> dict[str, str]:
    """variable -> its default as an env value, where it is a literal (settings.py's declaration,
    or the table's cell for variables read by the Procfile or make run)."""
    defaults = {name: _as_env(value) for name, value in environment_reads().items() if value is not _NOT_LITERAL}
    for row in settings_table().values():
        cell = row.default
        if row.django_setting == "—" and cell.startswith("`") and cell.endswith("`"):
            defaults[row.variable] = cell.strip("`")
    return defaults


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    listed = set(env_entries(ENV_EXAMPLE))
    missing = sorted(known_settings() - listed)
    unknown = sorted(listed - known_settings())
    assert not missing, f"deploy/env.example does not list these settings: {missing}"
    assert not unknown, f"deploy/env.example lists variables no setting reads: {unknown}"


def test_each_entry_has_a_comment_line_above_it() -> None:
    for entry in env_entries(ENV_EXAMPLE).values():
        assert len(entry.comment) > 10, f"env.example:{entry.line}: {entry.name} has no comment line above it"


def test_set_values_are_the_defaults_or_say_the_default() -> None:
    defaults = declared_defaults()
    checked = 0
    for entry in env_entries(ENV_EXAMPLE).values():
        default = defaults.get(entry.name)
        if default is None or not entry.active:
            continue
        checked += 1
        if entry.value != default:
            assert f"(default {default or 'empty'}" in entry.comment or entry.name in SECRETS, (
                f"env.example:{entry.line}: {entry.name}={entry.value} differs from the default {default!r} "
                "and its comment does not say the default"
            )
    assert checked > 40


def test_commented_entries_show_the_default() -> None:
    defaults = declared_defaults()
    for entry in env_entries(ENV_EXAMPLE).values():
        if not entry.active and entry.name in defaults:
            assert entry.value == defaults[entry.name], f"env.example:{entry.line}: {entry.name} shows {entry.value!r}"


def test_an_empty_value_only_where_empty_is_the_default() -> None:
    # `KEY=` sets an empty string, which is not "unset": an empty TIME_ZONE, ALLOWED_HOSTS or
    # CELERY_BROKER_URL would break the processes.
    defaults = declared_defaults()
    empty = {name for name, value in env_values(ENV_EXAMPLE).items() if value == ""}
    wrong = sorted(name for name in empty if defaults.get(name, "") != "" or name not in known_settings())
    assert not wrong, f"set to an empty value, but their default is not empty: {wrong}"
    assert "ORDINAUT_TRUSTED_PROXIES" in empty, "no proxy is trusted unless named"


def test_test_only_variables_are_never_set() -> None:
    entries = env_entries(ENV_EXAMPLE)
    for name in TEST_ONLY:
        assert not entries[name].active, name


def test_secrets_are_placeholders() -> None:
    values = env_values(ENV_EXAMPLE)
    for name in SECRETS:
        assert PLACEHOLDER in values[name], f"{name} must be a `{PLACEHOLDER}` placeholder in env.example"
    owner = env_values(OWNER_ENV_EXAMPLE)
    assert PLACEHOLDER in owner["POSTGRES_PASSWORD"]


def test_values_are_plain_for_every_reader() -> None:
    # docker compose interpolates `$` and reads quotes its own way; kubectl's --from-env-file keeps
    # quotes; ordinaut_site/envfile.py strips a comment after a space. Plain values read the same.
    for path in (ENV_EXAMPLE, OWNER_ENV_EXAMPLE):
        for entry in env_entries(path).values():
            assert not set(entry.value) & set("$\"'` #"), f"{path.name}:{entry.line}: {entry.name}={entry.value}"
        assert env_values(path) == {e.name: e.value for e in env_entries(path).values() if e.active}


def test_the_owner_file_holds_the_owner_alone_and_agrees_with_itself() -> None:
    owner = env_values(OWNER_ENV_EXAMPLE)
    assert set(owner) == OWNER_VARIABLES
    url = urlsplit(owner["OWNER_DATABASE_URL"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        owner["POSTGRES_USER"],
        owner["POSTGRES_PASSWORD"],
        owner["POSTGRES_DB"],
    )


def test_the_processes_connect_as_another_role_than_the_owner() -> None:
    app = urlsplit(env_values(ENV_EXAMPLE)["DATABASE_URL"])
    owner = urlsplit(env_values(OWNER_ENV_EXAMPLE)["OWNER_DATABASE_URL"])
    assert app.scheme == owner.scheme == "postgres"
    assert app.username
    assert app.username != owner.username
    assert (app.hostname, app.port, app.path) == (owner.hostname, owner.port, owner.path), "one database, two roles"


def test_the_settings_load_from_env_example() -> None:
    # In a fresh interpreter with only the file's values (and PATH): a value settings.py cannot read
    # stops it, as it would stop every container.
    environment = {"PATH": os.environ["PATH"], **env_values(ENV_EXAMPLE)}
    script = (
        "import json; from django.conf import settings; "
        "print(json.dumps({'debug': settings.DEBUG, 'hosts': settings.ALLOWED_HOSTS, "
        "'engine': settings.DATABASES['default']['ENGINE'], 'ssl': settings.SECURE_SSL, "
        "'env_file': settings.ENV_FILE, 'broker': settings.CELERY_BROKER_URL}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**environment, "DJANGO_SETTINGS_MODULE": "ordinaut_site.settings"},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {
        "debug": False,
        "hosts": ["ordinaut.example.com", "localhost", "web"],
        "engine": "django.db.backends.postgresql",
        "ssl": True,
        "env_file": None,
        "broker": "redis://redis:6379/0",
    }
