"""Proposal bookkeeping: which candidates a study already holds, so none is proposed twice.

A trial's parameters reach the storage only once the objective suggests them, after the sampler
has proposed. Two things cover that gap:

- within a process, ``Proposals`` remembers what it proposed to trials whose storage snapshot
  may not show each other's parameters yet (threads under ``n_jobs > 1``, which propose one at a
  time under the sampler's lock);
- across processes (or sampler objects), each proposal is first written into its trial as a
  claim (``CLAIM_KEY``), then the storage is read afresh: a proposal another trial already holds
  or claims is given up and drawn again. Of two trials racing for one candidate, the one that
  reads last sees the other's claim, so at most one keeps it.
"""

import itertools
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.storage.optuna_internals import (
    cached_trials,
    enqueued_params,
    set_system_attr,
    study_id,
)

# The trial system attribute holding the parameters proposed to a trial not yet suggested.
CLAIM_KEY = "EvolutionarySampler:proposal"


def study_key(study: optuna.Study) -> tuple:
    """What in-memory caches know a study by: its storage id, and the start of its first trial,
    since SQLite gives a study created after a deletion the deleted one's id."""
    trials = cached_trials(study)
    return study_id(study), trials[0].datetime_start if trials else None


@dataclass
class Running:
    """What this process knows of a trial it samples, while trials that may have read the
    storage before it wrote its parameters still run (times are the bookkeeping's event count)."""

    generation: int
    started: int  # its storage snapshot is no older than this
    params: dict[str, int] | None = None  # the proposal, as parameters
    candidate: Candidate | None = None  # the same, decoded
    finished: int | None = None  # when after_trial (or a storage snapshot) saw it finish


class Proposals:
    """The candidates a study holds, has queued, or was promised, as one sampler sees them.
    Not thread-safe: the sampler calls it under its lock. A copy (pickle, deepcopy) starts
    empty: everything it keeps can be read from the storage again."""

    def __init__(self, space: CandidateSpace) -> None:
        self._space = space
        self._decoded: dict[tuple, Candidate] = {}  # by a trial's parameters, whatever study
        self._running: dict[tuple, Running] = {}  # (study key, trial number)
        self._events = itertools.count()  # orders trial starts and ends in this process

    def __getstate__(self) -> dict:
        return {"space": self._space}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["space"])

    # -- trials of this process -----------------------------------------------------------------

    def start(self, study: optuna.Study, trial: FrozenTrial, generation) -> None:
        """Trial ``trial`` starts; ``generation()`` gives its generation. Its start is counted
        before anything reads its storage snapshot."""
        started = next(self._events)
        key = study_key(study)
        self.forget_other_studies(key)
        self._running[key, trial.number] = Running(generation(), started)

    def entry(self, study: optuna.Study, trial: FrozenTrial, generation) -> Running:
        """Trial ``trial``'s entry; ``generation()`` gives it one if it was never started (a
        direct call of the sampler's hooks)."""
        key = (study_key(study), trial.number)
        if key not in self._running:
            self._running[key] = Running(generation(), started=-1)
        return self._running[key]

    def finish(self, study: optuna.Study, trial: FrozenTrial) -> None:
        entry = self._running.get((study_key(study), trial.number))
        if entry is not None:
            entry.finished = next(self._events)

    def forget_other_studies(self, key: tuple) -> None:
        """Drop what is kept under the same storage id for another (deleted) study."""
        for stale in [k for k in self._running if k[0][0] == key[0] and k[0] != key]:
            del self._running[stale]

    # -- what the study holds -------------------------------------------------------------------

    def seen(self, study: optuna.Study, current: int | None = None) -> set[Candidate]:
        """Every candidate the study has scored, is scoring or has queued, with those this
        process proposed that trial ``current``'s storage snapshot may not show yet."""
        # The storage's cached view (as BaseGASampler reads it); claim() reads afresh.
        trials = cached_trials(study)
        seen = {c for c in map(self.candidate_of, trials) if c is not None}
        return seen | self._proposed_to_running(study, trials, current)

    def candidate_of(self, trial: FrozenTrial) -> Candidate | None:
        """The candidate a stored trial holds: its parameters, else those queued for it, else
        (while it runs) those proposed to it; None if it has no complete set."""
        names = self._space.required_names
        key = tuple(trial.params.items())  # a trial's parameters never change once written
        if key in self._decoded:
            return self._decoded[key]
        if all(n in trial.params for n in names):
            self._decoded[key] = self._space.decode(trial.params)
            return self._decoded[key]
        for params in (enqueued_params(trial),
                       trial.system_attrs.get(CLAIM_KEY, {})
                       if trial.state == TrialState.RUNNING else {}):
            if all(n in params for n in names):
                return self._space.decode(params)
        return None

    def claim(self, study: optuna.Study, trial: FrozenTrial, candidate: Candidate,
              params: dict[str, int]) -> bool:
        """Write ``params`` into ``trial`` as its claim, then read the study afresh: True if no
        other trial holds or claims ``candidate`` (else the proposal must be drawn again)."""
        set_system_attr(study, trial, CLAIM_KEY, params)
        number = trial.number
        return not any(t.number != number and self.candidate_of(t) == candidate
                       for t in study.get_trials(deepcopy=False))

    def _proposed_to_running(self, study: optuna.Study, trials: list[FrozenTrial],
                             current: int | None) -> set[Candidate]:
        """Proposals of this process that trial ``current``'s storage snapshot (``trials``) may
        lack: those of trials still running (other threads), or that finished after it started.
        An entry goes once no running trial started before it finished."""
        key = study_key(study)
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
