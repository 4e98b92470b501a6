"""How the evolutionary sampler makes a child from ranked parents: its child strategies.

As NSGA-II's child generation strategy, a strategy is called with the parents (best first) and
a random generator, and returns one child. ``ParzenChild`` samples where the good parents are
dense (TPE's idea, inside the evolution); ``CrossoverMutationChild`` recombines and jumps as
NSGA-II does; ``ChildGeneration`` picks one of the two per child.
"""

import abc
from collections.abc import Sequence

import numpy as np

from autodiff_optuna.search import variation
from autodiff_optuna.search.encoding import Candidate, CandidateSpace

# The narrowest Parzen kernel, as a fraction of T: once the better half agrees on a step, its
# spread (and Scott's bandwidth) shrinks to nothing, and children would only repeat it.
MIN_BANDWIDTH = 0.02
# Truncating a step's kernel to [0, T): a draw outside it is drawn again this many times at most
# (then clipped by ``repair``), as TPE's truncated normals never leave the range.
MAX_KERNEL_REDRAWS = 20


class ChildStrategy(abc.ABC):
    """Makes one child of ``parents`` (ranked, best first)."""

    @abc.abstractmethod
    def __call__(self, parents: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
        raise NotImplementedError


def tournament(ranked: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
    """Binary tournament: of two random parents, the better ranked one wins."""
    a, b = rng.integers(len(ranked), size=2)
    return ranked[min(a, b)]


class ParzenChild(ChildStrategy):
    """A draw from a Parzen estimate over the better half of the parents, as TPE draws from
    its l(x): one member, each step moved by a Gaussian truncated to [0, T), masks moving with
    their steps; in a space that searches the solver, each position's rule that of a random
    member of the half, or (with TPE's prior weight, one in n + 1) any rule of that position.

    The kernel is as wide as Scott's rule for the half's spread on the step, and never narrower
    than TPE's "magic clip", T / (1 + n) for a half of n members (at least ``MIN_BANDWIDTH`` of
    T): while few schedules are good, children explore well beyond them. Narrow kernels, Scott's
    alone, kept whole searches around generation 0's standard spacings (BENCHMARKS.md, "TPE's
    kernel inside the evolution"). Crossover and mutation recombine and jump; this samples the
    region the good schedules share."""

    def __init__(self, space: CandidateSpace) -> None:
        self._space = space

    def __call__(self, parents: Sequence[Candidate], rng: np.random.Generator) -> Candidate:
        good = parents[: max(2, len(parents) // 2)]
        top = self._space.num_train_timesteps
        steps = np.array([c.timesteps for c in good], dtype=float)
        scott = steps.std(axis=0) * len(good) ** (-1.0 / (self._space.steps + 4))
        bandwidth = np.maximum(scott, max(MIN_BANDWIDTH * top, top / (1 + len(good))))
        centre = good[int(rng.integers(len(good)))]
        offsets = rng.normal(0.0, bandwidth)
        at = np.array(centre.timesteps, dtype=float)
        for _ in range(MAX_KERNEL_REDRAWS):
            out = (at + offsets < 0) | (at + offsets > top - 1)
            if not out.any():
                break
            offsets[out] = rng.normal(0.0, bandwidth[out])
        child = variation.shift(self._space, centre, offsets, rng)
        if not self._space.solver_search:
            return child
        return self._space.repair(child.genes, rng, self._rules(good, rng))

    def _rules(self, good: Sequence[Candidate], rng: np.random.Generator) -> list:
        """Per position, a random good member's rule, or with TPE's prior weight 1 / (n + 1) a
        uniform draw of that position's rules (so a rule the half lacks can come back)."""
        rules = []
        for i, choices in enumerate(self._space.rule_choices):
            if rng.random() < 1.0 / (len(good) + 1):
                rules.append(choices[int(rng.integers(len(choices)))])
            else:
                rules.append(good[int(rng.integers(len(good)))].rules[i])
        return rules


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
