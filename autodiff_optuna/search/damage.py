"""Stage 2's damage filter: a child that the study's own trials show to be ruinous is drawn again.

The skip prior (``variation.prior_weights``) makes each costly skip rare, but a child's harm is
the sum of its skips': a mutation that turns on several moderately costly ones ruins it as well.
A child's predicted damage is that sum, of its skips' measured costs (``skip_cost``), in units of
the median positive cost (``variation.cost_scale``). In the digits preset studies' stage 2
(BENCHMARKS.md, "Stage 2's damage filter"), children whose predicted damage reached 0.75 were
worse than the uniform schedule in 20 of 50 cases, the others in 24 of 190.

Where that edge lies differs between models and studies (digits-deep's LayerDrop-trained layers
hardly ever ruin a child), so it is learned from the study's own completed trials of the
generations before the child's (``ruin_threshold``; the sampler fits it, as it ranks the parents,
from what every worker sees alike), and nothing is filtered before they show one: a model whose
skips are cheap is never held back, and its children are drawn exactly as without the filter.
What the sum cannot see stays: skips that are free alone and ruinous together, and a step moved
too far. On the digits presets it cut the children worse than uniform from 44 to 41 of 240, one
run each: a little, not surely.
"""

from collections.abc import Callable, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.search.children import ChildFilter
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.fidelity import is_carried
from autodiff_optuna.search.trial import FID_CONSTRAINT
from autodiff_optuna.search.variation import RUINOUS, cost_scale
from autodiff_optuna.storage.record import FAIL_REASON_ATTR

# The edge: the lowest damage of a child worse than uniform at and above which at least this
# share of the study's own children were worse than uniform, ...
RUIN_SHARE = 0.4
# ... MIN_RUINED of them at least, at RUIN_CONTRAST times the share below it. That share is
# smoothed, (worse + 1) / (children + 2): a few clean children below are no evidence that
# damage, and not a moved step or the noise, made those above worse
MIN_RUINED = 3
RUIN_CONTRAST = 2.0


class DamageFilter(ChildFilter):
    """Predicts a stage-2 child's damage from the measured skip costs (``cost[i][j]``: layer
    ``space.layers[j]`` skipped at the ``i``-th step) and, fitted to a study's trials, tells
    which children to draw again."""

    def __init__(self, space: CandidateSpace, cost: Sequence[Sequence[float]]) -> None:
        cost = np.asarray(cost, dtype=float)
        self._cost = np.where(cost >= RUINOUS, np.inf, cost / cost_scale(cost))
        self._space = space
        self._column = {layer: j for j, layer in enumerate(space.layers)}

    def damage(self, candidate: Candidate) -> float:
        """The summed cost of ``candidate``'s skips, in median skip costs (inf: a skip whose
        images were not finite)."""
        return float(sum(self._cost[i, self._column[layer]]
                         for i, mask in enumerate(candidate.skip) for layer in mask))

    def fit(self, trials: Sequence[FrozenTrial]) -> Callable[[Candidate], bool] | None:
        """What to accept, learned from ``trials`` (stage 2's own complete and failed trials:
        carried stage-1 elites, and trials whose outcome says nothing of their candidate, are
        left out); None where the trials show no edge yet."""
        names = self._space.required_names
        history = [(self.damage(self._space.decode(t.params)), worse)
                   for t in trials if not is_carried(t) and all(n in t.params for n in names)
                   for worse in [_worse_than_uniform(t)] if worse is not None]
        edge = ruin_threshold(history)
        if edge is None:
            return None
        return lambda candidate: self.damage(candidate) < edge


def _worse_than_uniform(trial: FrozenTrial) -> bool | None:
    """Whether ``trial``'s candidate was worse than uniform: by its FID constraint, or failed
    for what its images were (``FAIL_REASON_ATTR``: not finite, say); None where it does not
    tell (no constraint; failed for another reason, a killed process say)."""
    if trial.state == TrialState.FAIL:
        return True if FAIL_REASON_ATTR in trial.user_attrs else None
    value = trial.constraints.get(FID_CONSTRAINT)
    return None if value is None else value > 0


def ruin_threshold(history: Sequence[tuple[float, bool]]) -> float | None:
    """The lowest damage ``d`` of a trial worse than uniform (``history``: the trials' (damage,
    worse than uniform) pairs) such that, of the trials at ``d`` or above, at least
    ``RUIN_SHARE`` and ``MIN_RUINED`` were worse than uniform, at ``RUIN_CONTRAST`` times the
    smoothed share of those below it (there must be some below); None where no damage is such
    an edge. An edge at a worse trial's damage never cuts off a group of clean children that
    only lies below worse ones."""
    history = sorted(history)
    ruined = {damage for damage, worse in history if worse}
    worse_total = sum(worse for _, worse in history)
    worse_below = 0
    for below, (damage, worse) in enumerate(history):
        first = below == 0 or damage != history[below - 1][0]
        if first and below and damage in ruined:
            above, worse_above = len(history) - below, worse_total - worse_below
            share_below = (worse_below + 1) / (below + 2)
            if (worse_above >= MIN_RUINED and worse_above >= RUIN_SHARE * above
                    and worse_above >= RUIN_CONTRAST * share_below * above):
                return damage
        worse_below += worse
    return None
