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
