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

As an Optuna sampler it owns the encoding's parameters and nothing else: any other parameter of
an objective (a guidance scale, say) is drawn by ``independent_sampler``. Parameters fixed by
someone else (``enqueue_trial`` with some of them, ``PartialFixedSampler``) stay fixed, and the
proposal is fitted around them. Threads of one process (``n_jobs > 1``) propose one at a time and
see each other's proposals before they reach the storage, so no two propose the same candidate.
The in-memory caches below only save storage reads; a process holds no state of its own.
"""

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseGASampler, BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.fidelity import is_evaluated
from autodiff_optuna.search.optuna_internals import (
    cached_trials,
    enqueued_params,
    ga_generation_key,
    nsgaii_elite_selection,
    record_constraints,
    set_system_attr,
    study_id,
)

MAX_REDRAWS = 100  # a child already in the study is redrawn up to this many times
# The narrowest Parzen kernel, as a fraction of T: once the better half agrees on a step, its
# spread (and Scott's bandwidth) shrinks to nothing, and children would only repeat it.
MIN_BANDWIDTH = 0.02


@dataclass
class _Running:
    """What this process knows of a trial it samples, while trials that may have read the
    storage before it wrote its parameters still run (times are the sampler's event count)."""

    generation: int
    started: int  # its storage snapshot is no older than this
    params: dict[str, int] | None = None  # the proposal, as parameters
    candidate: Candidate | None = None  # the same, decoded
    finished: int | None = None  # when after_trial (or a storage snapshot) saw it finish


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
        constraints_func: as NSGA-II's; infeasible trials rank after feasible ones.
        independent_sampler: samples every parameter outside the encoding (default: a
            ``RandomSampler`` with ``seed``).
    """

    def __init__(self, space: CandidateSpace, *, population_size: int = 20,
                 initial: Sequence[Candidate] = (), elite_size: int | None = None,
                 parzen_prob: float = 0.5, crossover_prob: float = 0.9,
                 gene_mutation_prob: float | None = None, first_generation: str = "random",
                 seed: int = 0, constraints_func=None,
                 independent_sampler: BaseSampler | None = None) -> None:
        if population_size < 2:
            raise ValueError("population_size must be at least 2")
        if not 0 <= crossover_prob <= 1 or not 0 <= parzen_prob <= 1:
            raise ValueError("crossover_prob and parzen_prob must be between 0 and 1")
        if first_generation not in ("random", "children"):
            raise ValueError("first_generation must be 'random' or 'children'")
        super().__init__(population_size)
        self._space = space
        self._distributions = space.distributions()
        self._initial = list(initial)
        self._elite_size = elite_size or max(2, population_size // 2)
        self._parzen_prob = parzen_prob
        self._crossover_prob = crossover_prob
        self._gene_mutation_prob = (1.0 / space.steps if gene_mutation_prob is None
                                    else gene_mutation_prob)
        self._first_generation = first_generation
        self._seed = seed
        self._constraints_func = constraints_func
        self._select_elites = nsgaii_elite_selection(self._elite_size, constraints_func)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        # Caches of what the storage holds, per study (see _study_key). Threads of one process
        # share them and propose one at a time under this lock.
        self._lock = threading.RLock()
        self._decoded: dict[tuple, Candidate] = {}  # by a trial's parameters, whatever study
        self._running: dict[tuple, _Running] = {}  # (study key, trial number)
        self._events = itertools.count()  # orders trial starts and ends in this process
        self._parents: dict[tuple, list[FrozenTrial]] = {}  # (study key, generation)

    # -- Optuna hooks ---------------------------------------------------------------------------

    def reseed_rng(self) -> None:
        # Optuna calls this per thread under n_jobs > 1: such a run is not reproducible anyway
        self._independent_sampler.reseed_rng()
        self._seed = int(np.random.SeedSequence().generate_state(1)[0])

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)  # a copy: wrappers delete what they fix

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # Enqueued trials with every parameter fixed never reach sample_relative: give them
        # their generation here so they count as members of the population all the same.
        # Always computed afresh: a cached entry under this key can only be a deleted study's.
        started = next(self._events)  # before this trial's storage snapshot is read
        key = self._study_key(study)
        with self._lock:
            self._forget_deleted_studies(key)
            self._running[key, trial.number] = _Running(self._generation_of(study, trial),
                                                        started)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        own = [n for n, d in search_space.items() if self._distributions.get(n) == d]
        if not own:
            return {}
        fixed = self._fixed(enqueued_params(trial))
        if any(n not in search_space and n not in fixed for n in self._distributions):
            # another sampler fixes some of the encoding (PartialFixedSampler) and its values
            # are not known yet: sample_independent proposes around them once they are
            return {}
        with self._lock:
            params = self._proposal(study, trial, fixed)
        return {name: params[name] for name in own}

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        if self._distributions.get(param_name) == param_distribution:
            # part of the encoding that sample_relative left: around what the trial holds now
            fixed = self._fixed({**enqueued_params(trial), **trial.params})
            with self._lock:
                return self._proposal(study, trial, fixed)[param_name]
        return self._independent_sampler.sample_independent(study, trial, param_name,
                                                            param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        # records constraint values where NSGA-II's selection looks for them
        if self._constraints_func is not None:
            record_constraints(self._constraints_func, study, trial, state)
        with self._lock:
            entry = self._running.get((self._study_key(study), trial.number))
            if entry is not None:
                entry.finished = next(self._events)

    # -- the population, read from the storage --------------------------------------------------

    def get_trial_generation(self, study: optuna.Study, trial: FrozenTrial) -> int:
        # before_trial stores it; sample_relative then gets a trial snapshot taken earlier
        return self._running_entry(study, trial).generation

    def _generation_of(self, study: optuna.Study, trial: FrozenTrial) -> int:
        """``BaseGASampler``'s rule (a generation is full at ``population_size`` members), with
        every evaluated trial a member: one that multi-fidelity pruning stopped after part of
        its images is a rejected child of its generation, so pruning filters each generation
        instead of slowing the evolution down."""
        attr = ga_generation_key(type(self))
        stored = trial.system_attrs.get(attr)
        if stored is not None:
            return stored
        newest, members = 0, 0
        for t in cached_trials(study, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            generation = t.system_attrs.get(attr, -1)
            if not is_evaluated(t) or generation < newest:
                continue
            if generation > newest:
                newest, members = generation, 0
            members += 1
        generation = newest if members < self.population_size else newest + 1
        set_system_attr(study, trial, attr, generation)
        return generation

    def get_parent_population(self, study: optuna.Study, generation: int) -> list[FrozenTrial]:
        # in trial order, as the storage returns them to a resumed process: ranking breaks ties
        # by input order, so the process that selected them must see the same order
        key = (self._study_key(study), generation)
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

    def candidates_in(self, study: optuna.Study, current: int | None = None) -> set[Candidate]:
        """Every candidate the study has scored, is scoring or has queued, with those this
        process proposed that trial ``current``'s storage snapshot may not show yet."""
        names = self._space.names
        seen = set()
        # The storage's cached view (as BaseGASampler reads it): at most one trial behind, and a
        # twin that slips through is pruned by the objective's duplicate check.
        trials = cached_trials(study)
        for t in trials:
            key = tuple(t.params.items())  # a trial's parameters never change once written
            if key in self._decoded:
                seen.add(self._decoded[key])
                continue
            complete = all(n in t.params for n in names)
            params = t.params if complete else enqueued_params(t)
            if all(n in params for n in names):
                candidate = self._space.decode(params)
                seen.add(candidate)
                if complete:
                    self._decoded[key] = candidate
        return seen | self._proposed_to_running(study, trials, current)

    # -- per-study bookkeeping ------------------------------------------------------------------

    @staticmethod
    def _study_key(study: optuna.Study) -> tuple:
        """What the caches know a study by: its storage id, and the start of its first trial,
        since SQLite gives a study created after a deletion the deleted one's id."""
        trials = cached_trials(study)
        return study_id(study), trials[0].datetime_start if trials else None

    def _forget_deleted_studies(self, key: tuple) -> None:
        """Drop what is cached under the same storage id for another (deleted) study."""
        for cache in (self._running, self._parents):
            for stale in [k for k in cache if k[0][0] == key[0] and k[0] != key]:
                del cache[stale]

    def _running_entry(self, study: optuna.Study, trial: FrozenTrial) -> _Running:
        key = (self._study_key(study), trial.number)
        with self._lock:
            if key not in self._running:  # sampled without before_trial (direct calls)
                self._running[key] = _Running(self._generation_of(study, trial), started=-1)
            return self._running[key]

    def _proposed_to_running(self, study: optuna.Study, trials: list[FrozenTrial],
                             current: int | None) -> set[Candidate]:
        """Proposals of this process that trial ``current``'s storage snapshot (``trials``) may
        lack: those of trials still running (other threads), or that finished after it started.
        An entry goes once no running trial started before it finished."""
        key = self._study_key(study)
        entries = {number: e for (k, number), e in self._running.items() if k == key}
        finished_elsewhere = {t.number for t in trials if t.state.is_finished()}
        for number, entry in entries.items():
            if entry.finished is None and number in finished_elsewhere:  # told elsewhere
                entry.finished = next(self._events)
        since = entries[current].started if current in entries else -1
        proposed = {e.candidate for number, e in entries.items()
                    if number != current and e.candidate is not None
                    and (e.finished is None or e.finished > since)}
        oldest = min((e.started for e in entries.values() if e.finished is None), default=None)
        for number, entry in entries.items():
            if entry.finished is not None and (oldest is None or entry.finished < oldest):
                del self._running[key, number]
        return proposed

    def _fixed(self, params: dict[str, Any]) -> dict[str, int]:
        """The encoding's parameters among ``params``."""
        return {n: int(v) for n, v in params.items() if n in self._distributions}

    # -- proposals ------------------------------------------------------------------------------

    def _proposal(self, study: optuna.Study, trial: FrozenTrial,
                  fixed: dict[str, int]) -> dict[str, int]:
        """This trial's proposal around ``fixed`` parameters, as parameters: made once, and
        again only if a parameter was fixed to another value since (under the lock)."""
        entry = self._running_entry(study, trial)
        if entry.params is not None and all(entry.params[n] == v for n, v in fixed.items()):
            return entry.params
        rng = np.random.default_rng([self._seed, trial.number])
        seen = self.candidates_in(study, current=trial.number)
        candidate = self._propose(study, entry.generation, seen, rng)
        if fixed:  # its own stream: the draws of an unconstrained proposal stay as they were
            params = self._space.encode_with(candidate, fixed,
                                             np.random.default_rng([self._seed, trial.number, 1]))
            candidate = self._space.decode(params)
        else:
            params = self._space.encode(candidate)
        entry.params, entry.candidate = params, candidate
        return params

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
        names = self._space.names  # (a user's objective may not have suggested them all)
        return [self._space.decode(t.params) for t in ranked
                if all(n in t.params for n in names)]

    def _child(self, parents: list[Candidate], rng: np.random.Generator) -> Candidate:
        if not parents:
            return self._space.random(rng)
        # at parzen_prob 0 no draw is spent: the crossover-and-mutation stream stays the same
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
