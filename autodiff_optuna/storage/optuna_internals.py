"""Every use of Optuna's private API, in one place.

Optuna's public API does not cover all a sampler needs (its own samplers use the same private
members), so these few are used knowingly, each behind one function saying why. Nothing else in
the package touches an underscored Optuna name: when Optuna changes one of them, only this module
changes, and ``tests/test_optuna_internals.py`` names the one that broke.
"""

from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# Where ``Study.enqueue_trial`` keeps a queued trial's parameters until they are suggested.
ENQUEUED_PARAMS_KEY = "fixed_params"


def cached_trials(study: optuna.Study, states: Container[TrialState] | None = None
                  ) -> list[FrozenTrial]:
    """The study's trials as Optuna's own samplers read them: one storage read per trial, taken
    at the trial's start and shared by every later call in the same thread (not copied: do not
    change them). ``study.get_trials`` reads the storage again on each call, a database query
    per call on an RDB storage."""
    return study._get_trials(deepcopy=False, states=states, use_cache=True)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The study's storage object (to open a linked study on it, or to write what the public
    API cannot): ``Study`` exposes no public accessor for it."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of the study (what in-memory caches are keyed by: names can be reused
    once a study is deleted). ``Study`` has no public accessor; note that an RDB storage on
    SQLite may give a new study the id of a deleted one."""
    return study._study_id


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (``number`` counts within a study; the storage API takes
    ids). Neither ``Trial`` nor ``FrozenTrial`` exposes it publicly."""
    return trial._trial_id


def set_system_attr(study: optuna.Study, trial: FrozenTrial | optuna.Trial, key: str,
                    value: Any) -> None:
    """Write a trial's system attribute, as Optuna's GA samplers record a trial's generation.
    The public API writes user attributes only (``Trial.set_system_attr`` no longer exists),
    and a sampler only holds a ``FrozenTrial`` anyway."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters ``Study.enqueue_trial`` fixed for this trial ({} for any other trial). They
    become ``trial.params`` only once suggested, and a sampler proposes before that; Optuna keeps
    them under an undocumented system attribute."""
    return trial.system_attrs.get(ENQUEUED_PARAMS_KEY, {})


def ga_generation_key(sampler_class: type) -> str:
    """The trial system attribute under which ``BaseGASampler`` stores a trial's generation
    (``"<class name>:generation"``), read by anything that groups trials by generation. The
    accessor is a private classmethod of ``BaseGASampler``."""
    return sampler_class._get_generation_key()


def nsgaii_elite_selection(population_size: int
                           ) -> Callable[[optuna.Study, list[FrozenTrial]], list[FrozenTrial]]:
    """NSGA-II's elite selection: non-dominated sorting and crowding distance, called as
    ``select(study, trials) -> elites`` (best front first). Optuna exports ``NSGAIISampler`` but
    not its selection strategy; reusing it avoids a second copy of it."""
    from optuna.samplers.nsgaii._elite_population_selection_strategy import (
        NSGAIIElitePopulationSelectionStrategy,
    )

    return NSGAIIElitePopulationSelectionStrategy(population_size=population_size)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Storage ids of the study's RUNNING trials whose heartbeat has expired (the trials
    ``optuna.storages.fail_stale_trials`` would fail), without failing them; [] for a storage
    without heartbeats. The query is private to Optuna's heartbeat storages."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return []
    return list(storage._get_stale_trial_ids(study._study_id))


def unbeaten_trial_ids(study: optuna.Study) -> list[int]:
    """Storage ids of the study's RUNNING trials that have not recorded a heartbeat: just
    started, or whose worker was killed between the trial's start and its first beat (Optuna's
    stale check passes over a trial without beats, so such a trial would stay RUNNING, and a
    worker waiting for it would wait for ever). [] for a storage without heartbeats. The
    session and model are private to Optuna's RDB storage."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import orm

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return []
    rdb = getattr(storage, "_backend", storage)  # Optuna wraps an RDB storage in a cache
    trials = models.TrialModel
    with _create_scoped_session(rdb.scoped_session, True) as session:
        running = (session.query(trials).options(orm.selectinload(trials.heartbeats))
                   .filter(trials.state == TrialState.RUNNING,
                           trials.study_id == study._study_id).all())
        return [t.trial_id for t in running if not t.heartbeats]


def heartbeat_grace(study: optuna.Study) -> float | None:
    """Seconds without a beat after which the study's storage takes a trial for dead (Optuna's
    grace period, twice the interval by default); None without heartbeats."""
    storage = study._storage
    rdb = getattr(storage, "_backend", storage)
    interval = getattr(rdb, "heartbeat_interval", None)
    if not interval:
        return None
    return getattr(rdb, "grace_period", None) or 2 * interval


def pop_waiting_trial(storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    """Set trial ``trial_id`` RUNNING if it is still WAITING, as one conditional UPDATE: True if
    this call moved it. ``RDBStorage.set_trial_state_values`` reads the state, then writes it,
    counting on ``SELECT ... FOR UPDATE``, which SQLite ignores; and the sqlite3 driver begins
    the transaction only at the write, so two processes could both read WAITING and both pop
    (run) one queued trial. The session and model are private to Optuna's RDB storage."""
    from datetime import datetime

    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trials = models.TrialModel
    with _create_scoped_session(storage.scoped_session) as session:
        moved = session.query(trials).filter(
            trials.trial_id == trial_id, trials.state == TrialState.WAITING
        ).update({trials.state: TrialState.RUNNING}, synchronize_session=False)
        if moved:  # the write lock is held from the UPDATE on: the start is this pop's
            trials.find_or_raise_by_id(trial_id, session).datetime_start = datetime.now()
    return bool(moved)
