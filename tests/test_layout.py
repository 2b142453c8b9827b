"""The package's layout follows the data flow: no import cycles, and each folder imports only from the ones above it.

Read statically (every import statement, at module level or inside a function), so a lazy import
that closes a cycle is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tinythinker", "dataset_builders", "eval_tasks")
# what each folder of tinythinker may import, besides itself and the shared top-level modules
ALLOWED = {
    "data": set(),
    "train": {"data", "evaluate"},
    "evaluate": {"data"},
    "commands": {"data", "train", "evaluate"},
}
ORCHESTRATORS = {"tinythinker.recipe", "tinythinker.study", "tinythinker.cli"}  # top-level modules that run the whole recipe


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base, *[f"{base}.{alias.name}" for alias in node.names]]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(_imports()) is None, " -> ".join(_cycle(_imports()) or [])


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_folders_import_only_what_comes_before_them():
    wrong = []
    for module, targets in _imports().items():
        if not module.startswith("tinythinker."):
            continue
        parts = module.split(".")
        folder = parts[1] if len(parts) > 2 else None
        for target in targets:
            if target.split(".")[0] != "tinythinker":
                wrong.append(f"{module} imports {target} (tinythinker never imports dataset_builders or eval_tasks)")
                continue
            tparts = target.split(".")
            tfolder = tparts[1] if len(tparts) > 2 else None
            if tfolder is None or tfolder == folder or module in ORCHESTRATORS:
                continue
            if folder is None or tfolder not in ALLOWED[folder]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)
