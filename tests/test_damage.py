"""Stage 2's damage filter: the edge learned from a study's own trials, and a sampler that stops
proposing children beyond it."""

import math
import pickle

import optuna
import pytest
from optuna.trial import TrialState

from autodiff_optuna.search.damage import DamageFilter, ruin_threshold
from autodiff_optuna.search.encoding import CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.trial import FID_CONSTRAINT
from autodiff_optuna.search.variation import RUINOUS
from autodiff_optuna.storage.record import FAIL_REASON_ATTR, STAGE1_TRIAL_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)
LAYERS = ("a", "b", "c", "d")


def test_damage_sums_the_skips_costs_in_median_costs():
    space = CandidateSpace(2, 100, LAYERS)
    damage = DamageFilter(space, [[0.0, 1.0, 2.0, 4.0], [0.0, 2.0, 3.0, RUINOUS]]).damage
    assert damage(space.candidate([60, 20])) == 0.0
    assert damage(space.candidate([60, 20], skip=[("b", "d"), ("c",)])) == pytest.approx(
        (1 + 4 + 3) / 2.0)  # the median positive cost is 2
    assert math.isinf(damage(space.candidate([60, 20], skip=[(), ("d",)])))


@pytest.mark.parametrize("history, edge", [
    # ruined children above 1, none below: the edge is 1
    ([(0.0, False)] * 10 + [(1.0, True), (1.0, False), (2.0, True), (3.0, True)], 1.0),
    # too few ruined above any edge
    ([(0.0, False)] * 10 + [(1.0, True), (2.0, False), (3.0, True)], None),
    # ruined everywhere: damage does not tell them apart, and nothing lies below the lowest
    ([(0.0, True)] * 10, None),
    # as ruined below as above: no contrast
    ([(0.0, True), (0.0, False)] * 5 + [(1.0, True), (1.0, False)] * 3, None),
    # clean children that only lie below ruined ones are not cut off with them
    ([(0.0, False)] * 20 + [(0.1, False)] * 10 + [(2.0, True)] * 10, 2.0),
    # one clean child below is little evidence: its share is smoothed to a third, and 3 of 5
    # above is not twice that
    ([(0.0, False), (1.0, True), (1.0, False), (2.0, True), (2.0, False), (3.0, True)], None),
    # twenty are: 3 of 5 above is
    ([(0.0, False)] * 20 + [(1.0, True), (1.0, False), (2.0, True), (2.0, False), (3.0, True)],
     1.0),
    ([], None),
])
def test_ruin_threshold(history, edge):
    assert ruin_threshold(history) == edge
    assert ruin_threshold(list(reversed(history))) == edge  # the order of the trials is moot


POPULATION = 10


def _run(space, cost, child_filter, trials=60):
    """A synthetic stage 2: a child is worse than uniform exactly where it skips a costly
    layer-step (FID 10 against the bound's 5). Its trials' (damage, worse) pairs."""
    damage = DamageFilter(space, cost).damage
    sampler = EvolutionarySampler(space, population_size=POPULATION, seed=1,
                                  initial=[space.candidate([80, 50, 20])],
                                  first_generation="children", parzen_prob=0.0, skip_prior=cost,
                                  child_filter=child_filter)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(trial):
        candidate = space.suggest(trial)
        fid = 1.0 + 9.0 * (damage(candidate) > 0)
        trial.set_constraint(FID_CONSTRAINT, fid - 5.0)
        return fid, 10.0 - sum(len(mask) for mask in candidate.skip)

    study.optimize(objective, n_trials=trials)
    return [(damage(space.decode(t.params)), t.constraints[FID_CONSTRAINT] > 0)
            for t in study.trials]


def test_the_sampler_stops_proposing_children_its_trials_show_ruinous():
    space = CandidateSpace(3, 100, LAYERS)
    # two free skips per step, two that ruin (of the same cost: the prior alone cannot tell
    # how many of them a child may hold)
    cost = [[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    unfiltered = _run(space, cost, None)
    filtered = _run(space, cost, DamageFilter(space, cost))
    # a child's edge is learned from the generations before its own (no trial is pruned here,
    # so trial n is of generation n // POPULATION)
    edges = [ruin_threshold(filtered[: n // POPULATION * POPULATION])
             for n in range(len(filtered))]
    learned = next((n for n, edge in enumerate(edges) if edge is not None), None)
    assert learned is not None and learned >= POPULATION
    assert filtered[:learned] == unfiltered[:learned]  # the same children until then
    after = list(zip(filtered, edges))[learned:]
    assert sum(edge is None or d < edge for (d, _), edge in after) >= 0.9 * len(after)
    ruined = [sum(w for _, w in run[learned:]) for run in (unfiltered, filtered)]
    assert ruined[1] < ruined[0] / 3


def test_fit_learns_from_the_studys_own_children_only():
    space = CandidateSpace(2, 100, LAYERS)
    damage_filter = DamageFilter(space, [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    clean, ruinous = space.candidate([60, 20]), space.candidate([60, 20], skip=[("b",), ()])

    def trial(candidate, worse, state=TrialState.COMPLETE, **attrs):
        complete = state == TrialState.COMPLETE
        return optuna.trial.create_trial(
            state=state, values=[1.0, 1.0] if complete else None, params=space.encode(candidate),
            distributions=space.distributions(), user_attrs=attrs,
            constraints=None if worse is None else {FID_CONSTRAINT: 1.0 if worse else -1.0})

    own = [trial(clean, False) for _ in range(10)] + [trial(ruinous, True) for _ in range(3)]
    accepts = damage_filter.fit(own)
    assert accepts is not None and accepts(clean) and not accepts(ruinous)
    # carried stage-1 elites and trials without the constraint are not its children's evidence
    carried = [trial(clean, True, **{STAGE1_TRIAL_ATTR: n}) for n in range(20)]
    unconstrained = [trial(clean, None) for _ in range(20)]
    assert damage_filter.fit(own + carried + unconstrained)(ruinous) is False
    assert damage_filter.fit(own[:10] + carried + unconstrained) is None
    # a child whose images failed the FID is as ruined as one worse than uniform; a trial that
    # failed for another reason (its process killed) tells nothing
    failed = trial(ruinous, None, TrialState.FAIL, **{FAIL_REASON_ATTR: "images not finite"})
    killed = trial(ruinous, None, TrialState.FAIL)
    assert damage_filter.fit(own[:12] + [failed])(ruinous) is False
    assert damage_filter.fit(own[:12] + [killed] * 5) is None


def test_a_sampler_with_a_filter_pickles():
    space = CandidateSpace(2, 100, LAYERS)
    cost = [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    sampler = EvolutionarySampler(space, skip_prior=cost, child_filter=DamageFilter(space, cost))
    copy = pickle.loads(pickle.dumps(sampler))
    candidate = space.candidate([60, 20], skip=[("b",), ("c",)])
    assert copy._child_filter.damage(candidate) == sampler._child_filter.damage(candidate) == 2.0
