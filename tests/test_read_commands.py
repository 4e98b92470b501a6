"""The commands that only read a study database (``best``, ``list``, and ``export`` but for the
file's diffusers fields) load neither torch nor diffusers, nor does reading a schedule file, and
the packages' public names, imported when first used, all resolve."""

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
from autodiff_optuna.export import read_schedule
codes = [main(["best", "--name", "s-k4", "--storage", URL]),
         main(["best", "--name", "s-k4", "--storage", URL, "--json", "--max-gflops", "0.2"]),
         main(["list", "--storage", URL]),
         main(["export", "--name", "s-k4", "--storage", URL, "--out", OUT])]
timesteps = read_schedule(OUT).timesteps
print(json.dumps({"codes": codes, "timesteps": timesteps,
                  "loaded": sorted(m for m in ("torch", "diffusers") if m in sys.modules)}))
"""


@pytest.mark.slow  # 1.3 s on the idle machine: out of the fast subset
def test_best_list_and_export_read_a_database_without_torch(tmp_path):
    """``export`` of a study that recorded no training schedule: one that did gets diffusers
    fields, whose scheduler config diffusers' own scheduler makes (and that loads torch)."""
    url, out = f"sqlite:///{tmp_path / 'read.db'}", str(tmp_path / "schedule.json")
    make_search(optuna.storages.RDBStorage(url), [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)],
                [([496, 381, 257, 101], 1, 8.5, 0.120)])
    run = subprocess.run([sys.executable, "-c", f"URL, OUT = {url!r}, {out!r}\n" + SCRIPT],
                         capture_output=True, text=True, timeout=CEILING)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout.splitlines()[-1])
    assert answer == {"codes": [0, 0, 0, 0], "timesteps": [496, 381, 257, 101], "loaded": []}
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


@pytest.mark.slow  # 2.4 s on the idle machine: out of the fast subset
def test_search_run_stays_the_function_once_its_module_is_loaded():
    """``search.run`` names both a module and the function that runs a stage; the package
    keeps the name the function, however the module was first loaded."""
    script = ("import autodiff_optuna.search.run\n"
              "from autodiff_optuna import search\n"
              "print(callable(search.run), search.run.__module__)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=CEILING)
    assert run.stdout.split() == ["True", "autodiff_optuna.search.run"], run.stderr
