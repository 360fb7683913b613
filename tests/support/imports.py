"""The project's import graph, read from the source with ast (nothing is imported): which module of
the apps imports which, for the layering test."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

APPS = ("ordinaut_site", "tasks", "runs", "pipelines")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """The project modules one file imports, at any depth (a lazy import counts), TYPE_CHECKING aside."""

    def __init__(self, package: list[str], known: Callable[[str], str | None]) -> None:
        self.package = package
        self.known = known
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self.known(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package[: len(self.package) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:  # `from runs import services` names a module
            self._add(self.known(f"{source}.{alias.name}") or self.known(source))

    def _add(self, target: str | None) -> None:
        if target:
            self.found.add(target)


@dataclass
class ImportGraph:
    """Edges between the apps' modules (migrations left out). Imports under `if TYPE_CHECKING:` are
    never executed, so they are not edges: they cannot make an import cycle."""

    edges: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path, apps: Iterable[str] = APPS) -> ImportGraph:
        files = {
            _module_name(root, path): path
            for app in apps
            for path in (root / app).rglob("*.py")
            if "migrations" not in path.relative_to(root).parts
        }

        def known(name: str) -> str | None:
            while name and name not in files:
                name = name.rpartition(".")[0]
            return name or None

        graph = cls()
        for module, path in files.items():
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            visitor = _Imports(package, known)
            visitor.visit(ast.parse(path.read_text(), filename=str(path)))
            found = visitor.found
            found.discard(module)
            graph.edges[module] = found
        return graph

    def cross_app_cycles(self) -> list[list[str]]:
        """The strongly connected groups of modules that span more than one app (Tarjan)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        groups: list[list[str]] = []

        def connect(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for target in sorted(self.edges.get(node, ())):
                if target not in index:
                    connect(target)
                    low[node] = min(low[node], low[target])
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len({member.split(".")[0] for member in group}) > 1:
                    groups.append(sorted(group))

        for node in sorted(self.edges):
            if node not in index:
                connect(node)
        return groups

    def imports_between(self, source_app: str, target_apps: Iterable[str]) -> list[tuple[str, str]]:
        targets = set(target_apps)
        return sorted(
            (module, target)
            for module, found in self.edges.items()
            if module.split(".")[0] == source_app
            for target in found
            if target.split(".")[0] in targets
        )
