"""Check zoo's structure: import circles, module sizes, function sizes.

Usage: ``python tools/check_structure.py [PACKAGE_DIR]`` (default ``zoo``).
Prints one line per finding and a summary; exits 1 when any limit is broken.
Imports count wherever they are written, inside functions too, so a circle
hidden behind a function-level import is still a circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def module_name(path: Path, root: Path) -> str:
    """Dotted name of ``path`` inside the package whose directory is ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of ``known`` that the module ``name`` imports, at any depth."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of ``graph`` with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def long_functions(tree: ast.AST, path: Path) -> list[str]:
    """``path:line name (N lines)`` for each function over the limit."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def main(root: Path) -> int:
    """Print every finding under ``root``; 1 when any limit is broken."""
    files = sorted(root.rglob("*.py"))
    trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
    names = {path: module_name(path, root) for path in files}
    known = set(names.values())
    graph = {
        names[path]: imported_modules(tree, names[path], path.name == "__init__.py", known)
        for path, tree in trees.items()
    }
    circles = strongly_connected(graph)
    big = [(len(p.read_text().splitlines()), p) for p in files]
    big = sorted(((n, p) for n, p in big if n > MAX_MODULE_LINES), reverse=True)
    long = [line for path, tree in trees.items() for line in long_functions(tree, path)]
    for circle in circles:
        print(f"import circle ({len(circle)} modules): {' '.join(circle)}")
    for lines, path in big:
        print(f"module over {MAX_MODULE_LINES} lines: {path} ({lines})")
    for line in long:
        print(f"function over {MAX_FUNCTION_LINES} lines: {line}")
    total = sum(len(p.read_text().splitlines()) for p in files)
    print(
        f"{len(files)} modules, {total} lines: {len(circles)} import circles, "
        f"{len(big)} modules over {MAX_MODULE_LINES} lines, "
        f"{len(long)} functions over {MAX_FUNCTION_LINES} lines"
    )
    return 1 if circles or big or long else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "zoo")))
