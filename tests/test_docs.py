"""The repository documents itself: settings table = settings.py, links resolve, nothing outside is cited."""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

BASE_DIR = Path(__file__).resolve().parents[1]
SETTINGS_PY = BASE_DIR / "ordinaut_site" / "settings.py"
CONFIGURATION_MD = BASE_DIR / "docs" / "configuration.md"
SETTINGS_TABLE_HEADER = "| variable | Django setting | default | meaning |"
# A row whose Django setting is "—" names a variable read outside settings.py: by one of these.
OTHER_READERS = ("deploy/Procfile", "ordinaut_site/quickstart.py", "Makefile")
ENV_HELPERS = {"env_int", "env_bool", "env_rate", "env_list"}
README_MAX_BYTES = 12 * 1024

# Files allowed to cite design notes kept outside the repository: none.
OUTSIDE_REFERENCE_ALLOWED: set[str] = set()
# Written in pieces so that this file does not match itself.
_OUTSIDE_REFERENCE = re.compile(
    "|".join(
        [
            r"\b(API|DESIGN|STYLE|BENCHMARKS|MCP_NOTES)\.md\b",
            r"\bMCP" + r"_NOTES\b",
            r"\bDESIGN" + r"( \d|'s|:| section)",
            r"shared " + r"folder",
            r"\.\./" + r"shared\b",
        ]
    )
)
SKIPPED_DIRS = {".git", ".venv", "var", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"}


# --- (a) docs/configuration.md against settings.py --------------------------------------------


@dataclass(frozen=True)
class Row:
    variable: str
    django_setting: str
    default: str
    meaning: str


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) >= 2 and cell.startswith("`") and cell.endswith("`") else cell


def settings_table() -> dict[str, Row]:
    lines = CONFIGURATION_MD.read_text().splitlines()
    start = lines.index(SETTINGS_TABLE_HEADER) + 2  # past the header and its |---| line
    rows: dict[str, Row] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        variable, django_setting, default, meaning = _cells(line)
        name = _unquote(variable)
        assert name not in rows, f"{name} is listed twice in docs/configuration.md"
        rows[name] = Row(name, _unquote(django_setting), default, meaning)
    return rows


_OPERATORS: dict[type, Any] = {ast.Mult: operator.mul, ast.Add: operator.add, ast.Sub: operator.sub}
_NOT_LITERAL = object()


def _literal(node: ast.expr | None) -> Any:
    """A default written as a literal (or constant arithmetic such as 7 * 86400); else _NOT_LITERAL."""
    if node is None:
        return _NOT_LITERAL
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _literal(node.left), _literal(node.right)
        if _NOT_LITERAL in (left, right):
            return _NOT_LITERAL
        return _OPERATORS[type(node.op)](left, right)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_LITERAL


def _is_environ(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)


def environment_reads() -> dict[str, Any]:
    """Every environment variable settings.py reads, by name, with its declared default
    (_NOT_LITERAL when there is none or it is computed). Read from the source, not from the loaded
    settings: the test run sets DATABASE_URL, REDIS_URL, SECRET_KEY and more."""
    reads: dict[str, Any] = {}
    for node in ast.walk(ast.parse(SETTINGS_PY.read_text())):
        name: object = None
        default: Any = _NOT_LITERAL
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            helper = isinstance(func, ast.Name) and func.id in ENV_HELPERS
            environ_get = isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value)
            getenv = isinstance(func, ast.Attribute) and func.attr == "getenv"
            if helper or environ_get or getenv:
                name = node.args[0].value
                default = _literal(node.args[1]) if len(node.args) > 1 else _NOT_LITERAL
        elif isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.slice, ast.Constant):
            name = node.slice.value
        if isinstance(name, str):
            reads[name] = default
    return reads


def test_settings_table_parses_and_every_row_is_complete() -> None:
    rows = settings_table()
    assert len(rows) > 40
    for row in rows.values():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", row.variable), row
        assert row.django_setting, row
        assert row.default, row
        assert row.meaning, row


def test_every_variable_settings_py_reads_is_documented() -> None:
    missing = sorted(set(environment_reads()) - set(settings_table()))
    assert not missing, f"settings.py reads these, docs/configuration.md does not list them: {missing}"


def test_every_ordinaut_setting_is_documented() -> None:
    ordinaut = {name for name in dir(settings) if name.startswith("ORDINAUT_")}
    assert "ORDINAUT_MAX_STEPS" in ordinaut
    missing = sorted(ordinaut - set(settings_table()))
    assert not missing, f"settings has these, docs/configuration.md does not list them: {missing}"


def test_every_documented_variable_is_read() -> None:
    reads = environment_reads()
    for row in settings_table().values():
        if row.django_setting == "—":
            readers = [path for path in OTHER_READERS if row.variable in (BASE_DIR / path).read_text()]
            assert readers, f"{row.variable}: documented as read outside settings.py, but {OTHER_READERS} never name it"
            continue
        assert row.variable in reads, f"{row.variable}: documented, but settings.py does not read it"
        assert hasattr(settings, row.django_setting), f"{row.variable}: no Django setting {row.django_setting}"


def _documented(default: Any, cell: str) -> bool:
    if default == "":
        return cell.startswith(("none", "empty"))
    if isinstance(default, bool):
        return cell in ({"`1`", "`true`"} if default else {"`0`", "`false`"})
    if isinstance(default, list):
        return cell == ("empty" if not default else f"`{','.join(default)}`")
    return cell == f"`{default}`"


def test_documented_defaults_are_the_declared_ones() -> None:
    rows = settings_table()
    checked = 0
    for name, default in environment_reads().items():
        if default is _NOT_LITERAL:
            continue  # computed (from VAR_DIR, REDIS_URL, other settings): the table says it in words
        checked += 1
        cell = rows[name].default
        assert _documented(default, cell), f"{name}: settings.py defaults to {default!r}, docs say {cell}"
    assert checked > 40


# --- (b) nothing refers to files outside the repository ---------------------------------------


def _text_files() -> list[Path]:
    found = []
    for path in BASE_DIR.rglob("*"):
        relative = path.relative_to(BASE_DIR)
        if any(part in SKIPPED_DIRS for part in relative.parts) or not path.is_file():
            continue
        try:
            path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary
        found.append(path)
    return found


def test_nothing_refers_to_files_outside_the_repository() -> None:
    offending = []
    for path in _text_files():
        relative = path.relative_to(BASE_DIR).as_posix()
        # This file holds the patterns themselves.
        if relative in OUTSIDE_REFERENCE_ALLOWED or relative == "tests/test_docs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _OUTSIDE_REFERENCE.search(line):
                offending.append(f"{relative}:{number}: {line.strip()[:120]}")
    assert not offending, "point these at the docs/ page instead:\n" + "\n".join(offending)


@pytest.mark.parametrize(
    "text",
    ["see BENCHMARKS.md", "(DESIGN 7)", "DESIGN's rule", "in the shared folder", "../shared/seed/x.md", "MCP_NOTES"],
)
def test_the_outside_reference_pattern_catches(text: str) -> None:
    assert _OUTSIDE_REFERENCE.search(text)


def test_the_outside_reference_pattern_spares_the_docs() -> None:
    assert not _OUTSIDE_REFERENCE.search("see docs/api.md and docs/benchmarks.md; the design decides")


# --- (c) relative links resolve; (d) the README is a front page -------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _markdown_files() -> list[Path]:
    return [BASE_DIR / "README.md", *sorted((BASE_DIR / "docs").glob("*.md"))]


def test_docs_pages_exist() -> None:
    pages = {path.name for path in (BASE_DIR / "docs").glob("*.md")}
    expected = {"api.md", "mcp.md", "scheduling.md", "pipelines.md", "events.md", "operations.md"}
    expected |= {"configuration.md", "architecture.md", "benchmarks.md"}
    assert expected <= pages


def test_relative_links_point_at_files_that_exist() -> None:
    broken = []
    links = 0
    for page in _markdown_files():
        for target in _LINK.findall(page.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s):, mailto:, or an anchor in the same page
            links += 1
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(BASE_DIR)}: {target}")
    assert links > 10
    assert not broken, f"links to nothing: {broken}"


def test_readme_is_a_front_page() -> None:
    size = len((BASE_DIR / "README.md").read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"
