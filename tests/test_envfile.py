"""The settings file loader (ordinaut_site/envfile.py): format, precedence, fill-only-missing, mode."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from django.conf import settings

from ordinaut_site import envfile

BASE_DIR = Path(__file__).resolve().parents[1]


def test_lines_comments_quotes_and_export() -> None:
    text = """
# a comment line
   # an indented one
PLAIN=value
SPACED = with spaces inside\t
export EXPORTED=yes
INLINE=abc # a comment after a space
HASH=a#b
EMPTY=
DOUBLE="two # words\\n\\t\\"q\\" \\\\ \\x"
SINGLE='$HOME \\n stays'
QUOTED_COMMENT="x"   # fine
URL=postgres://u:p@h:5432/db?sslmode=require
"""
    assert envfile.parse(text) == {
        "PLAIN": "value",
        "SPACED": "with spaces inside",
        "EXPORTED": "yes",
        "INLINE": "abc",
        "HASH": "a#b",
        "EMPTY": "",
        "DOUBLE": 'two # words\n\t"q" \\ \\x',
        "SINGLE": "$HOME \\n stays",
        "QUOTED_COMMENT": "x",
        "URL": "postgres://u:p@h:5432/db?sslmode=require",
    }


def test_the_last_line_of_a_key_wins() -> None:
    assert envfile.parse("A=1\nA=2\n") == {"A": "2"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("no equals sign", "expected KEY=VALUE"),
        ("1ABC=x", "expected KEY=VALUE"),
        ("BAD KEY=x", "expected KEY=VALUE"),
        ('OPEN="never closed', 'closing " is missing'),
        ("TRAIL='x' y", "text after the quoted value"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(line: str, message: str) -> None:
    with pytest.raises(envfile.EnvFileError, match=rf"^settings\.env:2: .*{re.escape(message)}"):
        envfile.parse(f"OK=1\n{line}\n", "settings.env")


def test_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert envfile.read(tmp_path / "nothing.env") == {}
    environ = {"A": "1"}
    assert envfile.load(tmp_path / "nothing.env", environ) == {}
    assert environ == {"A": "1"}


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("SECRET_KEY=from-file\nDEBUG=1\nEMPTY_IN_ENV=file\n")
    environ = {"SECRET_KEY": "from-env", "EMPTY_IN_ENV": ""}
    applied = envfile.load(path, environ)
    assert applied == {"DEBUG": "1"}
    assert environ == {"SECRET_KEY": "from-env", "DEBUG": "1", "EMPTY_IN_ENV": ""}


def test_resolve_default_none_and_explicit(tmp_path: Path) -> None:
    default = tmp_path / ".env"
    assert envfile.resolve(None, default) == default
    assert envfile.resolve(None, default, testing=True) is None, "a test run reads no developer file"
    for off in ("", "none", " NONE "):
        assert envfile.resolve(off, default) is None
    assert envfile.resolve(str(tmp_path / "x.env"), default, testing=True) == tmp_path / "x.env"


def test_this_test_run_read_no_settings_file() -> None:
    assert settings.ENV_FILE is None


def test_fill_missing_creates_the_file_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / ".env"
    values = {"SECRET_KEY": "k#1 'x' \"y\" \\z", "DATABASE_URL": "sqlite:////tmp/a b.sqlite3", "DEBUG": "0"}
    assert envfile.fill_missing(path, values) == ["SECRET_KEY", "DATABASE_URL", "DEBUG"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith(envfile.HEADER)
    assert envfile.read(path) == values, "what is written reads back the same"


def test_fill_missing_never_changes_a_line_that_is_there(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    edited = "# mine\nREDIS_URL = 'redis://127.0.0.1:6379/9'  # my Redis\nDEBUG=1"  # no final newline
    path.write_text(edited)
    path.chmod(0o644)
    added = envfile.fill_missing(path, {"REDIS_URL": "redis://127.0.0.1:6379/3", "DEBUG": "0", "SECRET_KEY": "s"})
    assert added == ["SECRET_KEY"]
    assert path.read_text() == edited + "\nSECRET_KEY=s\n", "the user's lines are kept byte for byte"
    assert envfile.read(path) == {"REDIS_URL": "redis://127.0.0.1:6379/9", "DEBUG": "1", "SECRET_KEY": "s"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert envfile.fill_missing(path, {"DEBUG": "0"}) == []
    assert path.read_text() == edited + "\nSECRET_KEY=s\n"


def test_the_documented_example_parses() -> None:
    text = (BASE_DIR / "docs" / "configuration.md").read_text()
    example = text.split("## The settings file", 1)[1].split("```\n", 2)[1]
    assert envfile.parse(example) == {
        "DEBUG": "0",
        "LOG_LEVEL": "INFO",
        "MCP_WEATHER_TOKEN": "Bearer a#b",
        "MCP_GREETING": "$HOME stays $HOME",
    }


def test_the_settings_file_is_git_ignored() -> None:
    assert ".env" in (BASE_DIR / ".gitignore").read_text().splitlines()
