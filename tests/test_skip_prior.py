"""Stage 2's skip prior and the confirmation noise, without a study."""

import numpy as np
import pytest

from autodiff_optuna.models import load_model
from autodiff_optuna.sampling.noise import CONFIRM, HELDOUT, SEARCH, TEACHER, draw
from autodiff_optuna.search import variation
from autodiff_optuna.search.encoding import CandidateSpace

LAYERS = ("a", "b", "c", "d")


def test_prior_weights_favour_cheap_skips_and_keep_the_mean():
    cost = [[0.0, 1.0, 2.0, 100.0], [0.0, 0.0, 1.0, 1e12]]
    weights = variation.prior_weights(cost)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0, 0] > weights[0, 1] > weights[0, 2] > weights[0, 3]
    assert weights[1, 3] == 0.0 and weights[0, 3] < 1e-10


def test_mutation_never_turns_on_a_ruinous_skip_and_still_turns_skips_off():
    space = CandidateSpace(2, 2, LAYERS)  # both steps taken: only the masks change
    prior = variation.prior_weights([[0.0, 0.0, 1e12, 0.0], [0.0, 1e12, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    parent = space.candidate([1, 0], skip=[("c",), ()])
    turned_on, turned_off = set(), 0
    for _ in range(400):
        child = variation.mutate(space, parent, rng, skip_prior=prior)
        for i, (old, new) in enumerate(zip(parent.skip, child.skip)):
            turned_on |= {(i, layer) for layer in set(new) - set(old)}
        turned_off += "c" not in child.skip[0]
    assert (1, "b") not in turned_on and (0, "c") not in turned_on
    assert {(0, "a"), (1, "a"), (1, "c")} <= turned_on
    assert turned_off > 0


def test_stage2_mutation_moves_steps_only_near_where_they_were():
    space = CandidateSpace(4, 1000, LAYERS)
    parent = space.candidate([900, 600, 300, 40])
    radius = round(variation.STAGE2_STEP_RADIUS * 1000)
    rng = np.random.default_rng(1)
    moves = [abs(a - b) for _ in range(300)
             for a, b in zip(variation.mutate(space, parent, rng).timesteps, parent.timesteps)]
    assert 0 < max(moves) <= radius  # steps do move, never far
    assert sum(m > 0 for m in moves) < 0.2 * len(moves)  # most children vary the masks only


def test_without_a_prior_mutation_draws_as_before():
    space = CandidateSpace(2, 1000, LAYERS)
    parent = space.candidate([700, 300])
    a = variation.mutate(space, parent, np.random.default_rng(3))
    b = variation.mutate(space, parent, np.random.default_rng(3), skip_prior=None)
    assert a == b


def test_the_confirmation_noise_is_none_of_the_others():
    model = load_model("digits", "cpu")
    batches = {p: draw(model, 8, 5, p) for p in (SEARCH, HELDOUT, TEACHER, CONFIRM)}
    for p, batch in batches.items():
        for q, other in batches.items():
            if p != q:
                assert not np.allclose(batch.noise.numpy(), other.noise.numpy())
    assert np.array_equal(draw(model, 8, 5, CONFIRM).noise.numpy(),
                          batches[CONFIRM].noise.numpy())  # seeded: the same each time
    assert not np.array_equal(draw(model, 8, 6, CONFIRM).noise.numpy(),
                              batches[CONFIRM].noise.numpy())
