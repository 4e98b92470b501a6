"""How the evolutionary sampler makes a child from ranked parents: its child strategies.

As NSGA-II's child generation strategy, a strategy is called with the parents (best first) and
a random generator, and returns one child. ``ParzenChild`` samples where the good parents are
dense (TPE's idea, inside the evolution); ``CrossoverMutationChild`` recombines and jumps as
NSGA-II does; ``ChildGeneration`` picks one of the two per child. A ``ChildFilter``, fitted to
the study's trials, tells the sampler which children to draw again.
"""

import abc
from collections.abc import Callable, Sequence

import numpy as np
from optuna.trial import FrozenTrial

from autodiff_optuna.search import variation
from autodiff_optuna.search.encoding import Candidate, CandidateSpace

# The narrowest Parzen kernel, as a fraction of the span of the space's coordinate (of T where
# that is the steps themselves): once the better half agrees on a step, its spread (and Scott's
# bandwidth) shrinks to nothing, and children would only repeat it.
MIN_BANDWIDTH = 0.02


class ChildStrategy(abc.ABC):
    """Makes one child of ``parents`` (ranked, best first)."""

    @abc.abstractmethod
    def __call__(self, parents: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
        raise NotImplementedError


class ChildFilter(abc.ABC):
    """Which children to draw again, learned from the study's trials (stage 2's
    ``damage.DamageFilter``)."""

    @abc.abstractmethod
    def fit(self, trials: Sequence[FrozenTrial]) -> Callable[[Candidate], bool] | None:
        """What to accept, given the study's complete and failed ``trials`` (the sampler
        passes those of the generations before the child's); None: every child."""
        raise NotImplementedError


def tournament(ranked: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
    """Binary tournament: of two random parents, the better ranked one wins."""
    a, b = rng.integers(len(ranked), size=2)
    return ranked[min(a, b)]


class ParzenChild(ChildStrategy):
    """A draw from a Parzen estimate over the better half of the parents: one member, each step
    moved by a Gaussian of Scott's bandwidth for that half (at least ``MIN_BANDWIDTH`` of the
    span), in the space's coordinate (the steps, or their noise levels); masks move with their
    steps. Crossover and mutation recombine and jump; this samples the region the good
    schedules share, at a scale that narrows as they agree."""

    def __init__(self, space: CandidateSpace) -> None:
        self._space = space

    def __call__(self, parents: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
        good = parents[: max(2, len(parents) // 2)]
        steps = self._space.coordinate([c.timesteps for c in good])
        bandwidth = np.maximum(steps.std(axis=0) * len(good) ** (-1.0 / (self._space.steps + 4)),
                               MIN_BANDWIDTH * self._space.coordinate_span)
        centre = good[int(rng.integers(len(good)))]
        return variation.shift(self._space, centre, rng.normal(0.0, bandwidth), rng)


class CrossoverMutationChild(ChildStrategy):
    """NSGA-II's child: crossover of two tournament winners (``crossover_prob``, else a copy of
    one), then mutation of each step with ``gene_mutation_prob`` (default 1/K), and bit flips of
    the masks in stage 2, so the child differs from its parents. ``skip_prior``: the measured
    (step position, layer) skip costs, which make cheap skips the likelier ones to turn on."""

    def __init__(self, space: CandidateSpace, crossover_prob: float = 0.9,
                 gene_mutation_prob: float | None = None,
                 bit_flip_prob: float | None = None, skip_prior=None) -> None:
        if not 0 <= crossover_prob <= 1:
            raise ValueError("crossover_prob must be between 0 and 1")
        self._space = space
        self._crossover_prob = crossover_prob
        self._gene_mutation_prob = (1.0 / space.steps if gene_mutation_prob is None
                                    else gene_mutation_prob)
        self._bit_flip_prob = bit_flip_prob
        # stage 2's measured skip costs as mutation weights (``variation.prior_weights``)
        self._skip_prior = None if skip_prior is None else variation.prior_weights(skip_prior)

    def __call__(self, parents: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
        if len(parents) >= 2 and rng.random() < self._crossover_prob:
            child = variation.crossover(self._space, tournament(parents, rng),
                                        tournament(parents, rng), rng)
        else:
            child = tournament(parents, rng)
        return variation.mutate(self._space, child, rng, self._gene_mutation_prob,
                                self._bit_flip_prob, self._skip_prior)


class ChildGeneration(ChildStrategy):
    """A Parzen child with probability ``parzen_prob`` (given two parents or more), else a
    crossover-and-mutation child; a random candidate when there are no parents."""

    def __init__(self, space: CandidateSpace, parzen_prob: float = 0.5,
                 crossover_prob: float = 0.9, gene_mutation_prob: float | None = None,
                 skip_prior=None) -> None:
        if not 0 <= parzen_prob <= 1:
            raise ValueError("parzen_prob must be between 0 and 1")
        self._space = space
        self._parzen_prob = parzen_prob
        self._parzen = ParzenChild(space)
        self._crossover_mutation = CrossoverMutationChild(space, crossover_prob,
                                                          gene_mutation_prob,
                                                          skip_prior=skip_prior)

    def __call__(self, parents: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
        if not parents:
            return self._space.random(rng)
        # at parzen_prob 0 no draw is spent: the crossover-and-mutation stream stays the same
        if self._parzen_prob and len(parents) >= 2 and rng.random() < self._parzen_prob:
            return self._parzen(parents, rng)
        return self._crossover_mutation(parents, rng)
