"""deploy/Dockerfile and .dockerignore: Python 3.12 slim, the pinned requirements, static files
collected at build, a non-root user, the entrypoint and a health check; hadolint and shellcheck
(their binaries come with the dev requirements) find nothing. No image is built here: no Docker
engine, no registry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.deploy.files import BASE_DIR, DEPLOY, ENTRYPOINT

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = BASE_DIR / ".dockerignore"
BIN = Path(sys.executable).parent
# What the running image needs from the build context.
NEEDED = [
    "manage.py",
    "requirements/base.txt",
    "deploy/Procfile",
    "deploy/entrypoint.sh",
    "deploy/probe.py",
    "ordinaut_site/settings.py",
    "tasks/scheduler.py",
    "runs/engine.py",
    "pipelines/tools.py",
]
# What must never reach an image.
KEPT_OUT = [".env", "deploy/.env", "deploy/owner.env", ".git/config", ".venv/bin/python", "var/secret_key"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, arguments = pending.partition(" ")
        found.append((word.upper(), arguments.strip()))
        pending = ""
    assert not pending, "a continued line never ends"
    return found


def arguments(word: str) -> list[str]:
    return [args for instruction, args in instructions() if instruction == word]


def test_the_base_image_is_python_312_slim() -> None:
    [base] = arguments("FROM")
    assert re.fullmatch(r"python:3\.12(\.\d+)?-slim(-\w+)?", base), base


def test_the_pinned_requirements_are_installed_before_the_code_is_copied() -> None:
    steps = instructions()
    copy_requirements = steps.index(("COPY", "requirements/base.txt requirements/base.txt"))
    install = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "pip install -r requirements/base.txt" in a)
    copy_all = steps.index(("COPY", ". ."))
    assert copy_requirements < install < copy_all, "the dependency layer is rebuilt only when the pins change"


def test_static_files_are_collected_at_build() -> None:
    assert any("manage.py collectstatic --noinput" in run for run in arguments("RUN"))


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = arguments("USER")
    assert users, "no USER: the processes would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), users[-1]
    assert group.isdigit(), users[-1]
    assert int(user) != 0, users[-1]
    assert int(group) != 0, users[-1]
    steps = instructions()
    assert steps.index(("USER", users[-1])) > max(i for i, (w, _) in enumerate(steps) if w == "RUN")


def test_the_entrypoint_and_the_health_check_run_deploy_entrypoint() -> None:
    [entrypoint] = arguments("ENTRYPOINT")
    assert entrypoint == '["/usr/bin/tini", "--", "/app/deploy/entrypoint.sh"]'
    [healthcheck] = arguments("HEALTHCHECK")
    assert healthcheck.endswith('CMD ["/app/deploy/entrypoint.sh", "check"]')
    assert arguments("WORKDIR") == ["/app"]
    assert os.access(ENTRYPOINT, os.X_OK), "deploy/entrypoint.sh must be executable"
    mode = subprocess.run(
        ["git", "ls-files", "--stage", "deploy/entrypoint.sh"], cwd=BASE_DIR, capture_output=True, text=True, check=True
    ).stdout.split(" ", 1)[0]
    assert mode in ("", "100755"), f"git records deploy/entrypoint.sh as {mode}, not executable"


def test_containers_listen_beyond_loopback_and_read_no_settings_file() -> None:
    [env] = [args for word, args in instructions() if word == "ENV" and "ORDINAUT_HOST" in args]
    assert "ORDINAUT_HOST=0.0.0.0" in env.split()
    assert "ORDINAUT_ENV_FILE=none" in env.split()


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `*` and `?` within one path element, `**` across
    any number of them."""
    regex = ""
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern):
        if piece.startswith("**"):
            regex += "(?:.*/)?" if piece.endswith("/") else ".*"
        elif piece == "*":
            regex += "[^/]*"
        elif piece == "?":
            regex += "[^/]"
        else:
            regex += re.escape(piece)
    return re.compile(regex)


def _ignored(path: str, patterns: list[str]) -> bool:
    """A path is left out when a pattern matches it or a folder above it; the last matching
    pattern decides (`!` takes a path back in)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        compiled = _pattern(pattern.removeprefix("!"))
        if any(compiled.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_secrets_and_state_out_and_the_code_in() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for path in KEPT_OUT:
        assert _ignored(path, patterns), f"{path} would be sent to the image build"
    for path in NEEDED:
        assert (BASE_DIR / path).exists(), path
        assert not _ignored(path, patterns), f"{path} is needed in the image but .dockerignore leaves it out"


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run([BIN / "hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_finds_nothing_in_the_entrypoint() -> None:
    done = subprocess.run([BIN / "shellcheck", str(ENTRYPOINT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
