"""One-way layering: imports follow the data (tasks -> runs -> pipelines -> ordinaut_site), the
cross-cutting package imports an app only where it wires them, and no import cycle spans two apps."""

from __future__ import annotations

from pathlib import Path

from tests.support.imports import ImportGraph

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a module may import its own app and the apps before it, never those after.
LAYERS = ("ordinaut_site", "pipelines", "runs", "tasks")
# The modules of the cross-cutting package whose job is to put the apps together.
WIRING = {"ordinaut_site.urls", "ordinaut_site.asgi"}


def layering_violations(graph: ImportGraph) -> list[str]:
    found = []
    for module, targets in sorted(graph.edges.items()):
        app = module.split(".")[0]
        if app not in LAYERS or module in WIRING:
            continue
        for target in sorted(targets):
            target_app = target.split(".")[0]
            if target_app in LAYERS and LAYERS.index(target_app) > LAYERS.index(app):
                found.append(f"{module} imports {target}")
    return found


def test_no_import_cycle_spans_two_apps() -> None:
    assert ImportGraph.read(ROOT).cross_app_cycles() == []


def test_imports_follow_the_data_and_the_cross_cutting_package_imports_apps_only_in_wiring() -> None:
    assert layering_violations(ImportGraph.read(ROOT)) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for app in ("ordinaut_site", "tasks", "runs", "pipelines"):
        (root / app).mkdir(exist_ok=True)
        (root / app / "__init__.py").touch()
    return root


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "runs/services.py": "from tasks import services\n",
            "tasks/services.py": "from runs.services import run_create\n",
            "ordinaut_site/health.py": "def check():\n    from tasks.services import x\n",
            "ordinaut_site/urls.py": "from tasks import services\n",
            "pipelines/engine.py": "import typing\nif typing.TYPE_CHECKING:\n    from runs.services import X\n",
        },
    )
    graph = ImportGraph.read(root)
    assert graph.cross_app_cycles() == [["runs.services", "tasks.services"]]
    assert layering_violations(graph) == [
        "ordinaut_site.health imports tasks.services",
        "runs.services imports tasks.services",
    ], "a lazy import counts; wiring may import apps; a TYPE_CHECKING import is not an edge"
