"""The package's folders are layers: a module imports only from its own layer or the ones below,
and no two modules import each other, even through function-local imports, relative imports,
``importlib.import_module`` or a package's ``__init__``."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autodiff_optuna"
# bottom to top; a module may import from its own layer and every layer below it
LAYERS = [
    {"errors", "version", "runtime", "lazy"},
    {"storage", "models"},
    {"sampling"},
    {"metrics"},
    {"search", "training"},
    {"export", "schedule_sampling", "pipelines", "reporting"},
    {"cli", "arguments", "__main__", "__init__"},
]


def _unit(module: str) -> str:
    """The layer unit of ``autodiff_optuna.a.b``: its top-level module or folder ``a``."""
    return module.split(".")[1] if "." in module else "__init__"


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(name: str, level: int, importer: str, is_package: bool) -> str:
    """``name`` imported ``level`` dots up from module ``importer`` (a package's ``__init__``
    when ``is_package``), as an absolute module name."""
    if level == 0:
        return name
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _dynamic_import(node: ast.Call) -> tuple[str, int] | None:
    """``importlib.import_module("x")``, ``import_module(".x", ...)`` or ``__import__("x")``
    with a constant name: that name and its number of leading dots."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return None
    name = arg.value.lstrip(".")
    return name, len(arg.value) - len(name)


def _imports(source: str, importer: str, is_package: bool, root: str) -> set[str]:
    """Every module name under ``root`` that ``source`` imports, at module level or inside a
    function, absolute or relative, by statement or through ``importlib``. ``from p import x``
    yields ``p.x`` (x a module or a name ``p`` defines: ``_graph`` tells them apart)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node.module or "", node.level, importer, is_package)
            found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)):
            found.add(_absolute(dynamic[0], dynamic[1], importer, is_package))
    return {n for n in found if n == root or n.startswith(root + ".")}


def _graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. A name imported from a package that is not
    one of its modules is the package's ``__init__``, and counts as importing it."""
    paths = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        imported = _imports(path.read_text(), name, path.name == "__init__.py", package.name)
        resolved = {m if m in paths else m.rsplit(".", 1)[0] for m in imported}
        graph[name] = {m for m in resolved if m in paths and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph``, or None. A package's ``__init__`` is a module like any
    other: a module that takes a name from its package's ``__init__``, which imports that module
    in turn, is a cycle."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            if found := visit(imported):
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if found := visit(module):
            return found
    return None


GRAPH = _graph(PACKAGE)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_against_the_layers(module):
    own = _layer(_unit(module)) if module != "autodiff_optuna" else len(LAYERS) - 1
    upward = sorted(m for m in GRAPH[module] if _layer(_unit(m)) > own)
    assert not upward, f"{module} (layer {own}) imports from above: {upward}"


def test_no_import_cycles():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# -- the checks above see every kind of import --------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


@pytest.mark.parametrize("source", [
    "from .b import f", "from . import b", "from .. import b", "import pkg.sub.b",
    "import importlib\nimportlib.import_module('pkg.sub.b')",
    "from importlib import import_module\nimport_module('.b', __package__)",
    "def late():\n    from pkg.sub import b", "__import__('pkg.sub.b')"])
def test_every_kind_of_import_is_seen(tmp_path, source):
    level_up = source.startswith("from .. ")
    files = {"__init__.py": "", "sub/__init__.py": "", "sub/a.py": source,
             "sub/b.py" if not level_up else "b.py": "def f(): pass\n"}
    graph = _graph(_package(tmp_path, files))
    assert graph["pkg.sub.a"] == {"pkg.b" if level_up else "pkg.sub.b"}


@pytest.mark.parametrize("files", [
    {"a.py": "from . import b", "b.py": "from .a import f"},
    {"a.py": "import importlib\nimportlib.import_module('pkg.b')", "b.py": "import pkg.a"},
    # a module that takes a name from its package's __init__, which imports that module
    {"sub/__init__.py": "from pkg.sub.a import f", "sub/a.py": "from pkg.sub import g"},
    {"sub/__init__.py": "from .a import f", "sub/a.py": "from . import g"},
])
def test_cycles_are_found(tmp_path, files):
    graph = _graph(_package(tmp_path, {"__init__.py": "", "sub/__init__.py": "", **files}))
    assert _cycle(graph)


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path):
    files = {"__init__.py": "from pkg.sub import a\n", "sub/__init__.py": "from .a import f\n",
             "sub/a.py": "from pkg.sub import b\n", "sub/b.py": "def f(): pass\n"}
    assert _cycle(_graph(_package(tmp_path, files))) is None
