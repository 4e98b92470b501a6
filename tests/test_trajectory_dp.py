import itertools

import pytest
import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.sampling import draw
from autodiff_optuna.sampling.noise import HELDOUT, SEARCH, TEACHER
from autodiff_optuna.sampling.rules import StepRule
from autodiff_optuna.sampling.trajectory_dp import (
    default_grid,
    dp_schedule,
    fit_schedule,
    teacher_trajectory,
    trajectory_error,
)

GRID = (999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0)
RULES = ["ddim", "dpmpp2m", "unipc", [StepRule(1), StepRule(3, True), StepRule(2), StepRule(1)]]


@pytest.fixture(scope="module")
def teacher(digits):
    return teacher_trajectory(digits, GRID, samples=16, seed=0, steps=41)


def _schedules(steps: int):
    """Every schedule of the grid from its first step."""
    for rest in itertools.combinations(GRID[1:], steps - 1):
        yield (GRID[0], *rest)


def test_teacher_is_the_fine_solver_at_the_grid(digits, teacher):
    assert teacher.grid == GRID
    assert teacher.states.shape == (len(GRID) + 1, 16, *digits.sample_shape)
    assert teacher.predictions.shape == (len(GRID), 16, *digits.sample_shape)
    assert teacher.sigmas[-1] == 0 and torch.all(teacher.sigmas[:-1] > 0)
    # it starts from the noise itself, of its own stream
    assert torch.equal(teacher.states[0], draw(digits, 16, 0, TEACHER).noise)
    for other in (SEARCH, HELDOUT):
        assert not torch.equal(teacher.states[0], draw(digits, 16, 0, other).noise)


@pytest.mark.parametrize("rule", RULES, ids=["ddim", "dpmpp2m", "unipc", "mixed"])
def test_dp_schedule_is_valid_and_no_worse_than_uniform(teacher, rule):
    steps = 4
    schedule, error = fit_schedule(teacher, steps, rule)
    assert len(schedule) == steps and schedule[0] == GRID[0]
    assert list(schedule) == sorted(set(schedule), reverse=True) and set(schedule) <= set(GRID)
    assert error == pytest.approx(trajectory_error(teacher, schedule, rule))
    evenly = (999, 699, 399, 99)
    assert error <= trajectory_error(teacher, evenly, rule)


def test_first_order_dp_is_the_least_of_all_schedules(teacher):
    for steps in (1, 2, 3):
        _, error = fit_schedule(teacher, steps, "ddim")
        least = min(trajectory_error(teacher, s, "ddim") for s in _schedules(steps))
        assert error == pytest.approx(least)


@pytest.mark.slow  # 3.4 s on the idle machine: out of the fast subset
def test_deterministic_for_a_seed(digits):
    def fitted(seed):
        return dp_schedule(digits, 3, "dpmpp2m", grid=GRID[::2], samples=8, seed=seed)

    assert fitted(1) == fitted(1)
    schedule = fitted(1)
    assert len(schedule) == 3 and schedule[0] == 999


def test_default_grid_spans_the_training_steps():
    grid = default_grid(1000)
    assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 51
    assert list(grid) == sorted(set(grid), reverse=True)


def test_bad_requests(digits, teacher):
    with pytest.raises(UsageError, match="1 to 11 steps"):
        fit_schedule(teacher, 12, "ddim")
    with pytest.raises(UsageError, match="not made of the DP grid"):
        trajectory_error(teacher, (899, 499, 0), "ddim")
    with pytest.raises(UsageError, match="distinct descending"):
        teacher_trajectory(digits, (500, 900, 0), samples=2)


def _stage1_trials(url: str):
    import optuna

    name = optuna.get_all_study_names(url)[0]
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


@pytest.mark.slow  # 4.5 s on the idle machine: out of the fast subset
def test_a_new_study_queues_and_reports_the_dp_spacing(tmp_path, capsys, monkeypatch):
    import json

    from autodiff_optuna.cli import main
    from autodiff_optuna.search import stages
    from autodiff_optuna.search.evolutionary import EvolutionarySampler
    from autodiff_optuna.storage.optuna_internals import ga_generation_key

    url = f"sqlite:///{tmp_path}/s.db"
    args = ["study", "--model", "digits", "--steps", "3", "--population", "6", "--samples",
            "80", "--stage", "1", "--min-samples", "0", "--quiet", "--storage", url]
    assert main([*args, "--trials", "6"]) == 0
    dp = [t for t in _stage1_trials(url) if t.user_attrs.get("spacing") == "dp"]
    assert len(dp) == 1 and dp[0].state.name == "COMPLETE"
    assert dp[0].system_attrs[ga_generation_key(EvolutionarySampler)] == 0
    steps = dp[0].user_attrs["timesteps"]
    # the preset's ipndm starts by the analytical first step: its DP's steps start below T - 1
    assert len(steps) == 3 and steps[0] < 999
    capsys.readouterr()
    assert main(["best", "--storage", url, "--name", "digits-k3", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["dp"]["trial"] == dp[0].number and best["dp"]["timesteps"] == steps
    assert best["uniform"] is not None
    assert main(["best", "--storage", url, "--name", "digits-k3"]) == 0
    assert f"  dp       stage 1 trial {dp[0].number}: {steps}" in capsys.readouterr().out

    # a resumed study fits no teacher and queues nothing more
    monkeypatch.setattr(stages, "dp_candidates", lambda ctx: pytest.fail("fitted again"))
    assert main([*args, "--trials", "7"]) == 0
    assert sum(t.user_attrs.get("spacing") == "dp" for t in _stage1_trials(url)) == 1


@pytest.mark.slow  # 3.0 s on the idle machine: out of the fast subset
def test_a_solver_search_queues_the_dp_spacing_of_each_dp_solver(tmp_path):
    from autodiff_optuna.cli import main

    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "--model", "digits", "--steps", "3", "--trials", "1", "--samples",
                 "80", "--stage", "1", "--min-samples", "0", "--solver", "search", "--quiet",
                 "--storage", url]) == 0
    dp = {t.user_attrs["solver"] for t in _stage1_trials(url)
          if t.user_attrs.get("spacing") == "dp"}
    assert dp == {"ddim", "dpmpp2m", "ipndm"}


@pytest.mark.slow  # fits the DP teacher: about 20 s
def test_the_dp_spacing_is_fitted_once_per_context(tmp_path, monkeypatch):
    """The estimate's timing creates a study (and so fits the DP spacing): the study it times,
    made with the same context, reuses that fit."""
    from autodiff_optuna import search
    from autodiff_optuna.search import stages
    from autodiff_optuna.search.config import SearchConfig
    from autodiff_optuna.search.estimate import time_bookkeeping

    ctx = search.SearchContext.build(SearchConfig("digits", 3, samples=80, population=3))
    time_bookkeeping(ctx, trials=1)
    assert ctx.dp_fitted
    monkeypatch.setattr(stages, "_fit_dp_candidates", lambda ctx: pytest.fail("fitted again"))
    study = search.open_stage1(ctx, "s", f"sqlite:///{tmp_path}/s.db")
    dp = [t for t in study.get_trials() if t.user_attrs.get("spacing") == "dp"]
    assert len(dp) == len(ctx.dp_fitted) == 1
