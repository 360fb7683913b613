"""The settings file (`.env` at the checkout's root): what `make run` decided, for every later command.

`KEY=VALUE` lines; blank lines and `#` comments are skipped, `export KEY=VALUE` is accepted. A value
may be quoted: 'single' is literal, "double" knows the escapes \\\\ \\" \\n \\t \\r. An unquoted value
ends at ` #` (a comment after a space). No `$VAR` expansion, no values over several lines.

Real environment variables always win over the file; `make run` only adds keys the file lacks, so a
line the user edited stays as it is. The file holds SECRET_KEY: it is written with mode 0600.
Imports nothing from Django or the apps: settings.py and the quick start both use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

DISABLED = {"", "none"}
HEADER = """\
# Ordinaut settings for every command run from this checkout (manage.py, celery, make run).
# Written by `make run`, which only adds the keys missing here: edit or delete any line.
# Environment variables win over these. It holds SECRET_KEY: keep it private (mode 0600).
# docs/configuration.md lists every variable.
"""

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+,=~-]+")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


class EnvFileError(ValueError):
    """A line of the file that is not KEY=VALUE; the message names the file and the line."""


def resolve(value: str | None, default: Path, *, testing: bool = False) -> Path | None:
    """The file to read, from ORDINAUT_ENV_FILE's value: unset, `default` (none in a test run,
    which must not depend on a developer's file); empty or "none", no file; else that path."""
    if value is None:
        return None if testing else default
    if value.strip().lower() in DISABLED:
        return None
    return Path(value).expanduser()


def _value(raw: str, where: str) -> str:
    if not raw or raw[0] not in "'\"":
        return re.split(r"\s#", raw, maxsplit=1)[0].strip()
    quote, chars, i = raw[0], [], 1
    while i < len(raw) and raw[i] != quote:
        if quote == '"' and raw[i] == "\\" and i + 1 < len(raw):
            chars.append(_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
            i += 2
            continue
        chars.append(raw[i])
        i += 1
    if i >= len(raw):
        raise EnvFileError(f"{where}: the value's closing {quote} is missing")
    rest = raw[i + 1 :].strip()
    if rest and not rest.startswith("#"):
        raise EnvFileError(f"{where}: text after the quoted value: {rest[:20]!r}")
    return "".join(chars)


def parse(text: str, source: str = ".env") -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, raw = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise EnvFileError(f"{where}: expected KEY=VALUE, got {line[:40]!r}")
        values[key] = _value(raw.strip(), where)
    return values


def read(path: Path) -> dict[str, str]:
    """The file's values; {} when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return parse(text, str(path))


def load(path: Path | None, environ: MutableMapping[str, str]) -> dict[str, str]:
    """Put the file's values into `environ` where it has none (the environment wins); returns those."""
    if path is None:
        return {}
    applied = {key: value for key, value in read(path).items() if key not in environ}
    environ.update(applied)
    return applied


def format_line(key: str, value: str) -> str:
    if _PLAIN.fullmatch(value):
        return f"{key}={value}"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'{key}="{escaped}"'


def fill_missing(path: Path, values: Mapping[str, str]) -> list[str]:
    """Append the keys of `values` the file does not have yet (creating it, mode 0600); a key it
    has keeps its line, whatever its value. Returns the keys added."""
    existing = read(path)
    missing = [key for key in values if key not in existing]
    if not missing and path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    empty = os.fstat(fd).st_size == 0
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        if empty:
            handle.write(HEADER)
        elif not path.read_text(encoding="utf-8").endswith("\n"):
            handle.write("\n")
        handle.writelines(format_line(key, values[key]) + "\n" for key in missing)
    return missing
