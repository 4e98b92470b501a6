import numpy as np
import pytest

from autodiff_optuna.errors import UsageError
from autodiff_optuna.sampling import schedules


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 8, 10, 50, 100, 999])
def test_standard_spacings_are_valid(k):
    alphas = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for name, s in schedules.standard_spacings(k, 1000, alphas).items():
        assert len(s) == k, name
        assert list(s) == sorted(set(s), reverse=True), name
        assert all(0 <= t < 1000 for t in s), name


def test_known_spacings():
    assert schedules.uniform(4, 1000) == (750, 500, 250, 0)  # guided-diffusion's "ddim4"
    assert schedules.trailing(4, 1000) == (999, 749, 499, 249)
    assert schedules.linspace(4, 1000) == (999, 666, 333, 0)


@pytest.mark.parametrize("bad, message", [
    ([999, 999, 10], "distinct"),
    ([1000, 10], "outside"),
    ([-1, 10], "outside"),
    ([], "at least one"),
])
def test_validate_rejects(bad, message):
    with pytest.raises(UsageError, match=message):
        schedules.validate(bad, 1000)


def test_validate_sorts_descending():
    assert schedules.validate([3, 900, 40], 1000) == (900, 40, 3)
