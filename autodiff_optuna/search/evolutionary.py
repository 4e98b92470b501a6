"""``EvolutionarySampler``: AutoDiffusion's evolutionary search as an Optuna sampler.

Generations, parents and the population all live in the study's storage (through
``BaseGASampler``'s generation attribute and parent cache), and every random draw is seeded by
(sampler seed, trial number). Any process that opens the study, a resumed one or a second worker,
therefore continues the same evolution; nothing is held only in memory.

Stage 1 draws and moves steps in the space's coordinate: the training steps themselves, or
(``--step-moves noise`` or ``stretch``) the model's noise levels as EDM spaces them
(``sampling.schedules.noise_coordinates``), where a move of the same size costs a schedule about
as much at either end; in training steps, 10 near the data ruin a 4-step schedule that 50 near
the noise barely change. (Stage 2 moves stage 1's settled steps by a few training steps at most,
``variation.STAGE2_STEP_RADIUS``; only its rare random steps are drawn in the coordinate.)

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
  step with probability 1/K (in noise levels mostly a move near where it was,
  ``variation.LOCAL_MOVE_SCALE``; and bit flips of the masks in stage 2), so every child differs
  from its parents. It is redrawn while the study already holds it (a random candidate after
  ``MAX_REDRAWS``): no trial is spent on a candidate the study has scored. In stage 2 it is
  also redrawn (``MAX_REJECTIONS`` times at most) while its summed skip costs reach the level
  the study's own trials show to be ruinous (``child_filter``: ``damage.DamageFilter``).
  (AutoDiffusion's own recipe, crossover or mutation half and half, found worse schedules at
  the same budget on digits; crossover and mutation alone, without Parzen children, settle on
  worse schedules than TPE: see BENCHMARKS.md.)

As an Optuna sampler it owns the encoding's parameters and nothing else: any other parameter of
an objective (a guidance scale, say) is drawn by ``independent_sampler``. Parameters fixed by
someone else (``enqueue_trial`` with some of them, ``PartialFixedSampler``) stay fixed, and the
proposal is fitted around them. No two trials are proposed the same candidate, whether they
run in threads of one process (``n_jobs > 1``) or in processes of their own (``proposals``);
a space with no candidate left stops the study with ``SearchSpaceExhausted``. The in-memory
caches only save storage reads; a process holds no state of its own, and the sampler pickles
and deep-copies as Optuna's own samplers do.

The parts, as Optuna's NSGA-II is built: ``encoding`` (the candidates), ``variation`` (their
operators), ``children`` (the child strategies), ``damage`` (stage 2's child filter),
``proposals`` (no candidate twice) and this module (the generation rule, parents and the
Optuna hooks).
"""

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseGASampler, BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.search.children import ChildFilter, ChildGeneration, ChildStrategy
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.fidelity import is_evaluated
from autodiff_optuna.search.proposals import Proposals, Running, study_key
from autodiff_optuna.storage.optuna_internals import (
    cached_trials,
    enqueued_params,
    ga_generation_key,
    nsgaii_elite_selection,
    set_system_attr,
)

MAX_REDRAWS = 100  # a child already in the study is redrawn up to this many times
# ... and one its child_filter refuses up to this many times, after which the next child is
# taken unfiltered (the filter's edge is learned, and can be wrong)
MAX_REJECTIONS = 20


class SearchSpaceExhausted(RuntimeError):
    """Every candidate of the space is in the study already: nothing is left to propose."""


class EvolutionarySampler(BaseGASampler):
    """Evolutionary search over K-step schedules.

    Args:
        space: the encoding (K steps out of T, and in stage 2 the skippable layers).
        population_size: trials per generation.
        initial: candidates generation 0 proposes first, in order (the standard spacings).
        elite_size: survivors per generation; parents are drawn from them.
        parzen_prob: chance that a child is a Parzen child: a random member of the better half
            of the ranked elites, each step moved by a Gaussian of that half's spread on the
            step (Scott's rule, at least ``children.MIN_BANDWIDTH`` of the span), in the
            space's coordinate; masks move with their steps.
        crossover_prob: chance that any other child is a crossover of two parents (else a copy
            of one) before it is mutated.
        gene_mutation_prob: chance that mutation touches each step (default 1/K; at least one
            step, or one mask bit, always changes).
        first_generation: what generation 0 holds after ``initial``: "random" candidates or
            "children" of ``initial``.
        seed: makes the whole search reproducible.
        independent_sampler: samples every parameter outside the encoding (default: a
            ``RandomSampler`` with ``seed``).
        child_generation_strategy: makes a child of ranked parents (default: a
            ``children.ChildGeneration`` of the three probabilities above).
        skip_prior: per (step position, layer) the measured cost of that skip (stage 2): the
            default strategy's mutation turns cheap skips on more often than costly ones.
        child_filter: fitted to the complete and failed trials of the generations before a
            proposal's, says which children to draw again (``damage.DamageFilter``: stage 2's
            children that its trials show to be ruinous), ``MAX_REJECTIONS`` times at most.
    """

    def __init__(self, space: CandidateSpace, *, population_size: int = 20,
                 initial: Sequence[Candidate] = (), elite_size: int | None = None,
                 parzen_prob: float = 0.5, crossover_prob: float = 0.9,
                 gene_mutation_prob: float | None = None, first_generation: str = "random",
                 seed: int = 0, independent_sampler: BaseSampler | None = None,
                 child_generation_strategy: ChildStrategy | None = None,
                 skip_prior=None, child_filter: ChildFilter | None = None) -> None:
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
        self._child = child_generation_strategy or ChildGeneration(
            space, parzen_prob, crossover_prob, gene_mutation_prob, skip_prior)
        self._first_generation = first_generation
        self._child_filter = child_filter
        self._seed = seed
        self._select_elites = nsgaii_elite_selection(self._elite_size)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        # Threads of one process share the caches and propose one at a time under this lock.
        self._lock = threading.RLock()
        self._proposals = Proposals(space)
        self._parents: dict[tuple, list[FrozenTrial]] = {}  # (study key, generation)

    def __getstate__(self) -> dict:
        # a lock does not pickle; the caches are only storage reads, so a copy starts without
        state = self.__dict__.copy()
        del state["_lock"]
        state["_parents"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

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
        with self._lock:
            self._proposals.start(study, trial, lambda: self._generation_of(study, trial))
            key = study_key(study)
            for stale in [k for k in self._parents if k[0][0] == key[0] and k[0] != key]:
                del self._parents[stale]

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
        with self._lock:
            self._proposals.finish(study, trial)

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
        key = (study_key(study), generation)
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
        with self._lock:
            return self._proposals.seen(study, current)

    def _running_entry(self, study: optuna.Study, trial: FrozenTrial) -> Running:
        with self._lock:  # sampled without before_trial (direct calls): a generation now
            return self._proposals.entry(study, trial, lambda: self._generation_of(study, trial))

    def _fixed(self, params: dict[str, Any]) -> dict[str, int]:
        """The encoding's parameters among ``params``."""
        return {n: int(v) for n, v in params.items() if n in self._distributions}

    # -- proposals ------------------------------------------------------------------------------

    def _proposal(self, study: optuna.Study, trial: FrozenTrial,
                  fixed: dict[str, int]) -> dict[str, int]:
        """This trial's proposal around ``fixed`` parameters, as parameters: made once, and
        again only if a parameter was fixed to another value since (under the lock). A
        proposal that another trial holds or claims by then is drawn again."""
        entry = self._running_entry(study, trial)
        if entry.params is not None and all(entry.params[n] == v for n, v in fixed.items()):
            return entry.params
        rng = np.random.default_rng([self._seed, trial.number])
        seen = self._proposals.seen(study, current=trial.number)
        for _ in range(MAX_REDRAWS):
            candidate = self._propose(study, entry.generation, seen, rng)
            params, candidate = self._fitted(candidate, fixed, trial.number)
            if self._proposals.claim(study, trial, candidate, params):
                break
            seen.add(candidate)
        entry.params, entry.candidate = params, candidate
        return params

    def _fitted(self, candidate: Candidate, fixed: dict[str, int],
                number: int) -> tuple[dict[str, int], Candidate]:
        """``candidate`` as parameters around ``fixed`` ones, and the candidate they hold."""
        if not fixed:
            return self._space.encode(candidate), candidate
        # its own stream: the draws of an unconstrained proposal stay as they were
        params = self._space.encode_with(candidate, fixed,
                                         np.random.default_rng([self._seed, number, 1]))
        return params, self._space.decode(params)

    def _propose(self, study, generation: int, seen: set[Candidate],
                 rng: np.random.Generator) -> Candidate:
        if len(seen) >= self._space.size:
            raise SearchSpaceExhausted(
                f"all {self._space.size} candidates of {self._space} are in study "
                f"{study.study_name!r} already: nothing is left to propose")
        if generation == 0:
            for candidate in self._initial:
                if candidate not in seen:
                    return candidate
            if self._first_generation == "random":
                return self._immigrant(seen, rng)
        parents = self._parents_for(study, generation)
        accepts = self._filter_for(study, generation)
        rejected = 0
        for _ in range(MAX_REDRAWS):
            child = self._child(parents, rng)
            if child in seen:
                continue
            if accepts is not None and rejected < MAX_REJECTIONS and not accepts(child):
                rejected += 1  # ruinous by the study's own trials: draw again
                continue
            return child
        return self._immigrant(seen, rng)

    def _filter_for(self, study, generation: int) -> Callable[[Candidate], bool] | None:
        """``child_filter`` fitted to the complete and failed trials of the generations before
        ``generation``: like its parents, what every worker proposing in it sees alike."""
        if self._child_filter is None:
            return None
        attr = ga_generation_key(type(self))
        return self._child_filter.fit([
            t for t in cached_trials(study, (TrialState.COMPLETE, TrialState.FAIL))
            if t.system_attrs.get(attr, generation) < generation])

    def _parents_for(self, study, generation: int) -> list[Candidate]:
        """Ranked parents (best first); generation 0 breeds from its initial spacings."""
        if generation == 0:
            return list(self._initial)
        # parents are kept in trial order: rank them again (best front first)
        ranked = self._select_elites(study, self.get_parent_population(study, generation))
        names = self._space.required_names  # (a user's objective may not have suggested them all)
        return [self._space.decode(t.params) for t in ranked
                if all(n in t.params for n in names)]

    def _immigrant(self, seen: set[Candidate], rng: np.random.Generator) -> Candidate:
        while True:
            candidate = self._space.random(rng)
            if candidate not in seen:
                return candidate
