import numpy as np
import pytest
import torch

from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.fid import FIDError, fid_from_features
from autodiff_optuna.models.digits_data import load_digits_uint8, split_halves


def test_real_digits_against_their_own_statistics_is_zero():
    scorer = load_scorer("digits")
    images, _ = load_digits_uint8()
    assert scorer(torch.from_numpy(images)) == pytest.approx(0.0, abs=1e-6)


def test_half_against_half_is_small_but_positive():
    scorer = load_scorer("digits")
    images, _ = load_digits_uint8()
    a, b = split_halves(len(images))
    fa = scorer.features(torch.from_numpy(images[a]))
    fb = scorer.features(torch.from_numpy(images[b]))
    floor = fid_from_features(fa, fb.mean(0), np.cov(fb, rowvar=False))
    noise = torch.randint(0, 256, (900, 1, 8, 8), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    assert 0 < floor < 0.05 * scorer(noise)


def test_scorer_is_built_once_per_process():
    assert load_scorer("digits") is load_scorer("digits")


def test_non_finite_features_fail_clearly():
    feats = np.ones((10, 4))
    feats[3, 1] = np.nan
    with pytest.raises(FIDError, match="not finite"):
        fid_from_features(feats, np.zeros(4), np.eye(4))


def test_the_spread_of_a_fid_is_seeded_and_shrinks_with_more_images():
    import numpy as np

    from autodiff_optuna.metrics.fid import fid_spread

    rng = np.random.default_rng(1)
    reference = rng.normal(size=(4000, 8))
    mu, sigma = reference.mean(0), np.cov(reference, rowvar=False)
    few, many = rng.normal(size=(200, 8)) + 0.2, rng.normal(size=(3200, 8)) + 0.2
    assert fid_spread(few, mu, sigma) == fid_spread(few, mu, sigma) > 0
    assert fid_spread(many, mu, sigma) < fid_spread(few, mu, sigma) / 2
    assert fid_spread(np.full((10, 8), np.nan), mu, sigma) == float("inf")


def test_a_paired_difference_spread_counts_the_shared_noise():
    import math

    from autodiff_optuna.metrics.fid import fid_spread, paired_spreads

    def fid_difference_spread(a, b, mu, sigma):
        return paired_spreads([a, b], mu, sigma)[1][0]

    rng = np.random.default_rng(2)
    reference = rng.normal(size=(4000, 8))
    mu, sigma = reference.mean(0), np.cov(reference, rowvar=False)
    one = rng.normal(size=(400, 8)) + 0.3
    other = one + 0.3 * rng.normal(size=one.shape)  # the same noises, sampled a little apart
    assert fid_difference_spread(one, one, mu, sigma) == 0
    paired = fid_difference_spread(one, other, mu, sigma)
    assert paired == fid_difference_spread(other, one, mu, sigma)
    assert 0 < paired < math.hypot(fid_spread(one, mu, sigma), fid_spread(other, mu, sigma)) / 2
    # each set's own spread from the one bootstrap is fid_spread's
    assert paired_spreads([one, other], mu, sigma)[0] == [fid_spread(one, mu, sigma),
                                                          fid_spread(other, mu, sigma)]
    with pytest.raises(ValueError, match="as many images"):
        fid_difference_spread(one, other[:-1], mu, sigma)
    assert fid_difference_spread(one, np.full_like(one, np.nan), mu, sigma) == float("inf")
