"""``EvolutionarySampler``: AutoDiffusion's evolutionary search as an Optuna sampler.

Generations, parents and the population all live in the study's storage (through
``BaseGASampler``'s generation attribute and parent cache), and every random draw is seeded by
(sampler seed, trial number). Any process that opens the study, a resumed one or a second worker,
therefore continues the same evolution; nothing is held only in memory.

Per trial:
- generation 0 proposes the standard spacings first (uniform, trailing, ...), then random
  candidates (stage 1, as NSGA-II starts; AutoDiffusion starts from mutated copies of uniform
  DDIM and random candidates, about half each) or variations of the initial candidates (stage 2,
  whose initial candidates are stage 1's elites);
- later generations draw parents by binary tournament from the elites, chosen by NSGA-II
  (non-dominated sorting and crowding distance; plain ranking for one objective) from the previous
  generation together with its own parents, so the best candidates survive;
- a child is either a Parzen child (``parzen_prob``): a random member of the better half of the
  elites with every step moved by a Gaussian kernel whose width is that half's spread (TPE's
  idea, sampling where good schedules are dense, inside the evolution), or made as NSGA-II makes
  one: crossover of two parents (``crossover_prob``, else a copy of one), then mutation of each
  step with probability 1/K (and bit flips of the masks in stage 2), so every child differs from
  its parents. It is redrawn while the study already holds it (a random candidate after
  ``MAX_REDRAWS``): no trial is spent on a candidate the study has scored. (AutoDiffusion's own
  recipe, crossover or mutation half and half, found worse schedules at the same budget on
  digits; crossover and mutation alone, without Parzen children, settle on worse schedules than
  TPE: see BENCHMARKS.md.)
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseGASampler, RandomSampler
# NSGA-II's own elite selection (ranks, crowding distance, constraint handling): reused, not rewritten
from optuna.samplers.nsgaii._elite_population_selection_strategy import (
    NSGAIIElitePopulationSelectionStrategy,
)
from optuna.trial import FrozenTrial, TrialState

from optuna.samplers._base import _process_constraints_after_trial

from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.fidelity import is_evaluated

MAX_REDRAWS = 100  # a child already in the study is redrawn up to this many times
# The narrowest Parzen kernel, as a fraction of T: once the better half agrees on a step, its
# spread (and Scott's bandwidth) shrinks to nothing, and children would only repeat it.
MIN_BANDWIDTH = 0.02


class EvolutionarySampler(BaseGASampler):
    """Evolutionary search over K-step schedules.

    Args:
        space: the encoding (K steps out of T, and in stage 2 the skippable layers).
        population_size: trials per generation.
        initial: candidates generation 0 proposes first, in order (the standard spacings).
        elite_size: survivors per generation; parents are drawn from them.
        parzen_prob: chance that a child is a Parzen child: a random member of the better half
            of the ranked elites, each step moved by a Gaussian of that half's spread on the
            step (Scott's rule, at least ``MIN_BANDWIDTH`` of T); masks move with their steps.
        crossover_prob: chance that any other child is a crossover of two parents (else a copy
            of one) before it is mutated.
        gene_mutation_prob: chance that mutation touches each step (default 1/K; at least one
            step, or one mask bit, always changes).
        first_generation: what generation 0 holds after ``initial``: "random" candidates or
            "children" of ``initial``.
        seed: makes the whole search reproducible.
    """

    def __init__(self, space: CandidateSpace, *, population_size: int = 20,
                 initial: Sequence[Candidate] = (), elite_size: int | None = None,
                 parzen_prob: float = 0.5, crossover_prob: float = 0.9,
                 gene_mutation_prob: float | None = None, first_generation: str = "random",
                 seed: int = 0, constraints_func=None) -> None:
        if population_size < 2:
            raise ValueError("population_size must be at least 2")
        if not 0 <= crossover_prob <= 1 or not 0 <= parzen_prob <= 1:
            raise ValueError("crossover_prob and parzen_prob must be between 0 and 1")
        if first_generation not in ("random", "children"):
            raise ValueError("first_generation must be 'random' or 'children'")
        super().__init__(population_size)
        self._space = space
        self._initial = list(initial)
        self._elite_size = elite_size or max(2, population_size // 2)
        self._parzen_prob = parzen_prob
        self._crossover_prob = crossover_prob
        self._gene_mutation_prob = (1.0 / space.steps if gene_mutation_prob is None
                                    else gene_mutation_prob)
        self._first_generation = first_generation
        self._seed = seed
        self._constraints_func = constraints_func
        self._select_elites = NSGAIIElitePopulationSelectionStrategy(
            population_size=self._elite_size, constraints_func=constraints_func)
        self._random_sampler = RandomSampler(seed=seed)
        # a cache of what the storage holds, never state of its own: decoded candidates by
        # (study, trial number), filled only from trials whose parameters are all written
        self._decoded: dict[tuple[str, int], Candidate] = {}
        self._generations: dict[tuple[str, int], int] = {}  # written once per trial
        self._parents: dict[tuple[str, int], list[FrozenTrial]] = {}  # fixed once stored

    # -- Optuna hooks ---------------------------------------------------------------------------

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self._space.distributions()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Enqueued trials with every parameter fixed never reach sample_relative: give them
        # their generation here so they count as members of the population all the same.
        self.get_trial_generation(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        rng = np.random.default_rng([self._seed, trial.number])
        generation = self.get_trial_generation(study, trial)
        seen = self.candidates_in(study)
        return self._space.encode(self._propose(study, generation, seen, rng))

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._random_sampler.sample_independent(study, trial, param_name,
                                                       param_distribution)

    def get_trial_generation(self, study: optuna.Study, trial: FrozenTrial) -> int:
        # before_trial stores it; sample_relative then gets a trial snapshot taken earlier
        key = (study.study_name, trial.number)
        if key not in self._generations:
            self._generations[key] = self._generation_of(study, trial)
        return self._generations[key]

    def _generation_of(self, study: optuna.Study, trial: FrozenTrial) -> int:
        """``BaseGASampler``'s rule (a generation is full at ``population_size`` members), with
        every evaluated trial a member: one that multi-fidelity pruning stopped after part of
        its images is a rejected child of its generation, so pruning filters each generation
        instead of slowing the evolution down."""
        attr = self._get_generation_key()
        stored = trial.system_attrs.get(attr)
        if stored is not None:
            return stored
        newest, members = 0, 0
        for t in study._get_trials(deepcopy=False, use_cache=True,
                                   states=(TrialState.COMPLETE, TrialState.PRUNED)):
            generation = t.system_attrs.get(attr, -1)
            if not is_evaluated(t) or generation < newest:
                continue
            if generation > newest:
                newest, members = generation, 0
            members += 1
        generation = newest if members < self._population_size else newest + 1
        study._storage.set_trial_system_attr(trial._trial_id, attr, generation)
        return generation

    def get_parent_population(self, study: optuna.Study, generation: int) -> list[FrozenTrial]:
        # in trial order, as the storage returns them to a resumed process: ranking breaks ties
        # by input order, so the process that selected them must see the same order
        key = (study.study_name, generation)
        if key not in self._parents:
            self._parents[key] = sorted(super().get_parent_population(study, generation),
                                        key=lambda t: t.number)
        return self._parents[key]

    def select_parent(self, study: optuna.Study, generation: int) -> list[FrozenTrial]:
        """The elites that generation ``generation`` breeds from (cached in the storage)."""
        previous = self.get_population(study, generation - 1)
        previous_parents = self.get_parent_population(study, generation - 1)
        pool = {t.number: t for t in previous + previous_parents
                if t.state == TrialState.COMPLETE}
        return self._select_elites(study, list(pool.values()))

    # -- proposals ------------------------------------------------------------------------------

    def after_trial(self, study, trial, state, values) -> None:
        # records constraint values where NSGA-II's selection looks for them
        if self._constraints_func is not None:
            _process_constraints_after_trial(self._constraints_func, study, trial, state)

    def candidates_in(self, study: optuna.Study) -> set[Candidate]:
        """Every candidate the study has scored, is scoring or has queued."""
        names = self._space.names
        seen = set()
        # The storage's cached view (as BaseGASampler reads it): at most one trial behind, and a
        # twin that slips through is pruned by the objective's duplicate check.
        for t in study._get_trials(deepcopy=False, use_cache=True):
            key = (study.study_name, t.number)
            if key in self._decoded:
                seen.add(self._decoded[key])
                continue
            complete = all(n in t.params for n in names)
            params = t.params if complete else t.system_attrs.get("fixed_params", {})
            if all(n in params for n in names):
                candidate = self._space.decode(params)
                seen.add(candidate)
                if complete:  # a trial's parameters never change once written
                    self._decoded[key] = candidate
        return seen

    def _propose(self, study, generation: int, seen: set[Candidate],
                 rng: np.random.Generator) -> Candidate:
        if generation == 0:
            for candidate in self._initial:
                if candidate not in seen:
                    return candidate
            if self._first_generation == "random":
                return self._immigrant(seen, rng)
        parents = self._parents_for(study, generation)
        for _ in range(MAX_REDRAWS):
            child = self._child(parents, rng)
            if child not in seen:
                return child
        return self._immigrant(seen, rng)

    def _parents_for(self, study, generation: int) -> list[Candidate]:
        """Ranked parents (best first); generation 0 breeds from its initial spacings."""
        if generation == 0:
            return list(self._initial)
        # parents are kept in trial order: rank them again (best front first)
        ranked = self._select_elites(study, self.get_parent_population(study, generation))
        return [self._space.decode(t.params) for t in ranked]

    def _child(self, parents: list[Candidate], rng: np.random.Generator) -> Candidate:
        if not parents:
            return self._space.random(rng)
        # at parzen_prob 0 no draw is spent, so such a sampler breeds exactly as before it existed
        if self._parzen_prob and len(parents) >= 2 and rng.random() < self._parzen_prob:
            return self._parzen_child(parents, rng)
        if len(parents) >= 2 and rng.random() < self._crossover_prob:
            child = self._space.crossover(self._tournament(parents, rng),
                                          self._tournament(parents, rng), rng)
        else:
            child = self._tournament(parents, rng)
        return self._space.mutate(child, rng, self._gene_mutation_prob)

    def _parzen_child(self, ranked: list[Candidate], rng: np.random.Generator) -> Candidate:
        """A draw from a Parzen estimate over the better half of ``ranked`` (best first): one
        member, each step moved by a Gaussian of Scott's bandwidth for that half. Crossover and
        mutation alone recombine and jump; this samples the region the good schedules share, at
        a scale that narrows as they agree."""
        good = ranked[: max(2, len(ranked) // 2)]
        steps = np.array([c.timesteps for c in good], dtype=float)
        bandwidth = np.maximum(steps.std(axis=0) * len(good) ** (-1.0 / (self._space.steps + 4)),
                               MIN_BANDWIDTH * self._space.num_train_timesteps)
        centre = good[int(rng.integers(len(good)))]
        return self._space.shift(centre, rng.normal(0.0, bandwidth), rng)

    def _immigrant(self, seen: set[Candidate], rng: np.random.Generator) -> Candidate:
        while True:
            candidate = self._space.random(rng)
            if candidate not in seen:
                return candidate

    @staticmethod
    def _tournament(ranked: list[Candidate], rng: np.random.Generator) -> Candidate:
        """Binary tournament: of two random parents, the better ranked one wins."""
        a, b = rng.integers(len(ranked), size=2)
        return ranked[min(a, b)]
