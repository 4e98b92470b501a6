"""The commands that only read a study database (``best``, ``list``) load neither torch nor
diffusers, and the packages' public names, imported when first used, all resolve."""

import importlib
import json
import subprocess
import sys

import optuna
import pytest
from helpers import CEILING
from test_results import UNIFORM, make_search

SCRIPT = """
import json, sys
from autodiff_optuna.cli import main
codes = [main(["best", "--name", "s-k4", "--storage", URL]),
         main(["best", "--name", "s-k4", "--storage", URL, "--json", "--max-gflops", "0.2"]),
         main(["list", "--storage", URL])]
print(json.dumps({"codes": codes, "loaded": sorted(m for m in ("torch", "diffusers")
                                                   if m in sys.modules)}))
"""


def test_best_and_list_read_a_database_without_torch(tmp_path):
    url = f"sqlite:///{tmp_path / 'read.db'}"
    make_search(optuna.storages.RDBStorage(url), [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)],
                [([496, 381, 257, 101], 1, 8.5, 0.120)])
    run = subprocess.run([sys.executable, "-c", f"URL = {url!r}\n" + SCRIPT],
                         capture_output=True, text=True, timeout=CEILING)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.splitlines()[-1])
    assert answer == {"codes": [0, 0, 0], "loaded": []}
    assert "s-k4: stage 1 (2 complete, 0 failed) and stage 2 (1 complete, 0 failed)" in run.stdout


@pytest.mark.parametrize("package", ["autodiff_optuna", "autodiff_optuna.search",
                                     "autodiff_optuna.sampling", "autodiff_optuna.models",
                                     "autodiff_optuna.metrics"])
def test_every_public_name_of_a_package_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018 - the lookup is the test


def test_search_run_stays_the_function_once_its_module_is_loaded():
    """``search.run`` names both a module and the function that runs a stage; the package
    keeps the name the function, however the module was first loaded."""
    script = ("import autodiff_optuna.search.run\n"
              "from autodiff_optuna import search\n"
              "print(callable(search.run), search.run.__module__)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=CEILING)
    assert run.stdout.split() == ["True", "autodiff_optuna.search.run"], run.stderr
