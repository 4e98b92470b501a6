"""The package's folders are layers: a module imports only from its own layer or the ones below,
and no two modules import each other, even through function-local imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autodiff_optuna"
# bottom to top; a module may import from its own layer and every layer below it
LAYERS = [
    {"errors", "version"},
    {"storage", "models"},
    {"sampling"},
    {"metrics"},
    {"search", "training"},
    {"export", "pipelines", "reporting"},
    {"cli", "__main__", "__init__"},
]


def _unit(module: str) -> str:
    """The layer unit of ``autodiff_optuna.a.b``: its top-level module or folder ``a``."""
    return module.split(".")[1] if "." in module else "__init__"


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every autodiff_optuna module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("autodiff_optuna."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # "from package import name" names a module when one exists by that name
        graph[name] = {m if m in modules else m.rsplit(".", 1)[0] for m in _imports(path)}
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return graph


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_against_the_layers(module):
    own = _layer(_unit(module)) if module != "autodiff_optuna" else len(LAYERS) - 1
    upward = sorted(m for m in GRAPH[module] if _layer(_unit(m)) > own)
    assert not upward, f"{module} (layer {own}) imports from above: {upward}"


def test_no_import_cycles():
    done, path = set(), []

    def visit(module):
        if module in path:
            cycle = path[path.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for imported in sorted(GRAPH[module]):
            # a package's __init__ re-exporting its own modules is not a cycle with them
            if not imported.startswith(module + ".") or module == "autodiff_optuna":
                visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
