"""Stage 2's damage filter: a child that the study's own trials show to be ruinous is not tried.

The skip prior (``variation.prior_weights``) makes each costly skip rare, but a child's harm is
the sum of its skips': a mutation that turns on several moderately costly ones ruins it as well.
A child's predicted damage is that sum, of its skips' measured costs (``skip_cost``), in units of
the median positive cost (``variation.cost_scale``). In the digits preset studies' stage 2
(BENCHMARKS.md, "Stage 2's damage filter"), children whose predicted damage reached 0.75 were
worse than the uniform schedule in 20 of 50 cases, the others in 24 of 190.

Where that edge lies differs between models and studies (digits-deep's LayerDrop-trained layers
hardly ever ruin a child), so it is learned from the study's own completed trials
(``ruin_threshold``), and nothing is filtered before they show one: a model whose skips are cheap
is never held back, and its children are drawn exactly as without the filter. What the sum cannot
see stays: skips that are free alone and ruinous together, and a step moved too far.
"""

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from optuna.trial import FrozenTrial

from autodiff_optuna.search.children import ChildFilter
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.fidelity import is_carried
from autodiff_optuna.search.trial import FID_CONSTRAINT
from autodiff_optuna.search.variation import RUINOUS, cost_scale

# The edge: the lowest predicted damage at and above which at least this share of the study's
# own children were worse than uniform, ...
RUIN_SHARE = 0.4
# ... MIN_RUINED of them at least, at RUIN_CONTRAST times the share below it (the evidence that
# damage, and not a moved step or the noise, made them worse)
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

    def damage(self, candidate: Candidate) -> float:
        """The summed cost of ``candidate``'s skips, in median skip costs (inf: a skip whose
        images were not finite)."""
        column = {layer: j for j, layer in enumerate(self._space.layers)}
        return float(sum(self._cost[i, column[layer]]
                         for i, mask in enumerate(candidate.skip) for layer in mask))

    def fit(self, trials: Iterable[FrozenTrial]) -> Callable[[Candidate], bool] | None:
        """What to accept, learned from ``trials`` (stage 2's own complete trials: carried
        stage-1 elites and trials without the FID constraint are left out); None where the
        trials show no edge yet."""
        names = self._space.names
        history = [(self.damage(self._space.decode(t.params)),
                    t.constraints[FID_CONSTRAINT] > 0)
                   for t in trials if not is_carried(t) and FID_CONSTRAINT in t.constraints
                   and all(n in t.params for n in names)]
        edge = ruin_threshold(history)
        if edge is None:
            return None
        return lambda candidate: self.damage(candidate) < edge


def ruin_threshold(history: Sequence[tuple[float, bool]]) -> float | None:
    """The lowest damage ``d`` (``history``: the trials' (damage, worse than uniform) pairs)
    such that, of the trials at ``d`` or above, at least ``RUIN_SHARE`` and ``MIN_RUINED`` were
    worse than uniform, at ``RUIN_CONTRAST`` times the share of those below it (there must be
    some below); None where no damage is such an edge."""
    history = sorted(history)
    worse_total = sum(worse for _, worse in history)
    worse_below = 0
    for below, (damage, worse) in enumerate(history):
        if below and damage != history[below - 1][0]:  # an edge lies between distinct damages
            above, worse_above = len(history) - below, worse_total - worse_below
            if (worse_above >= MIN_RUINED and worse_above >= RUIN_SHARE * above
                    and worse_above * below >= RUIN_CONTRAST * worse_below * above):
                return damage
        worse_below += worse
    return None
