"""Property tests of the evolutionary sampler, on a cheap synthetic objective."""

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodiff_optuna.sampling import schedules
from autodiff_optuna.search.encoding import StepSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
T = 1000


def _schedule(k):
    return st.lists(st.integers(0, T - 1), min_size=k, max_size=k, unique=True).map(
        lambda s: tuple(sorted(s, reverse=True)))


def _valid(candidate, k, t=T):
    return (len(candidate) == k and list(candidate) == sorted(set(candidate), reverse=True)
            and all(0 <= x < t for x in candidate))


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 10), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_mutation_makes_valid_neighbours(k, data, seed):
    space = StepSpace(k, T)
    sampler = EvolutionarySampler(space, population_size=4)
    parent = data.draw(_schedule(k))
    rng = np.random.default_rng(seed)
    child = sampler.mutate(parent, rng)
    assert _valid(child, k)
    assert child != parent  # at least one step replaced or shifted


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 10), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_crossover_draws_from_the_union(k, data, seed):
    space = StepSpace(k, T)
    sampler = EvolutionarySampler(space, population_size=4)
    a, b = data.draw(_schedule(k)), data.draw(_schedule(k))
    child = sampler.crossover(a, b, np.random.default_rng(seed))
    assert _valid(child, k)
    union = set(a) | set(b)
    # every step comes from a parent, but for refills of a step both parents gave (a step
    # only repeats among the picks when both parents hold it)
    outside = [t for t in child if t not in union]
    assert len(outside) <= len(set(a) & set(b))


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 6), params=st.lists(st.integers(0, 9), min_size=6, max_size=6))
def test_decode_repairs_any_encoding(k, params):
    space = StepSpace(k, 10)
    candidate = space.decode({f"t{i}": p for i, p in enumerate(params[:k])})
    assert _valid(candidate, k, 10)


def _synthetic_study(storage, k=3, t=60, seed=0, population=8):
    space = StepSpace(k, t)
    target = np.array([41, 17, 3][:k])
    sampler = EvolutionarySampler(space, population_size=population, seed=seed,
                                  initial=[schedules.uniform(k, t), schedules.trailing(k, t)])
    study = optuna.create_study(storage=storage, sampler=sampler, study_name="synthetic",
                                load_if_exists=True)

    def objective(trial):
        cand = space.decode({n: trial.suggest_int(n, 0, t - 1) for n in space.names})
        trial.set_user_attr("timesteps", list(cand))
        return float(np.abs(np.array(cand) - target).sum())

    return study, objective, sampler


def test_never_proposes_a_candidate_twice_and_improves():
    study, objective, _ = _synthetic_study(None)
    study.optimize(objective, n_trials=160)
    cands = [tuple(t.user_attrs["timesteps"]) for t in study.trials]
    assert len(set(cands)) == len(cands)
    assert all(_valid(c, 3, 60) for c in cands)
    first_gen = min(t.value for t in study.trials[:8])
    assert study.best_value < first_gen / 3


def test_first_generation_holds_the_initial_spacings():
    study, objective, _ = _synthetic_study(None)
    study.optimize(objective, n_trials=8)
    cands = [tuple(t.user_attrs["timesteps"]) for t in study.trials]
    assert cands[:2] == [schedules.uniform(3, 60), schedules.trailing(3, 60)]
    gens = {t.system_attrs["EvolutionarySampler:generation"] for t in study.trials}
    assert gens == {0}


def test_state_lives_in_the_storage(tmp_path):
    """A study resumed by a fresh process (new sampler, same database) continues the very same
    evolution as one that was never interrupted."""
    whole, objective, _ = _synthetic_study(f"sqlite:///{tmp_path}/a.db")
    whole.optimize(objective, n_trials=40)

    first, objective, _ = _synthetic_study(f"sqlite:///{tmp_path}/b.db")
    first.optimize(objective, n_trials=17)
    resumed, objective, _ = _synthetic_study(f"sqlite:///{tmp_path}/b.db")  # new sampler object
    resumed.optimize(objective, n_trials=23)

    def history(study):
        return [(tuple(t.user_attrs["timesteps"]),
                 t.system_attrs["EvolutionarySampler:generation"]) for t in study.trials]

    assert history(resumed) == history(whole)


def test_enqueued_trials_join_the_population():
    study, objective, _ = _synthetic_study(None)
    study.enqueue_trial({"t0": 50, "t1": 30, "t2": 10})
    study.optimize(objective, n_trials=3)
    assert study.trials[0].params == {"t0": 50, "t1": 30, "t2": 10}
    assert study.trials[0].system_attrs["EvolutionarySampler:generation"] == 0
    cands = [tuple(t.user_attrs["timesteps"]) for t in study.trials]
    assert len(set(cands)) == 3
