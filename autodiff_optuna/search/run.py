"""Running a stage to its target: failed candidates, dead workers, Ctrl-C and a database that
fails mid-run, each handled so that a rerun of the same command resumes."""

import copy
import functools
import sys
import time
import warnings

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.search import confirm, fidelity, patience
from autodiff_optuna.search.context import SearchContext
from autodiff_optuna.search.progress import ProgressPrinter
from autodiff_optuna.search.trial import make_objective
from autodiff_optuna.storage import record
from autodiff_optuna.storage.optuna_internals import (
    heartbeat_grace,
    storage_of,
    unbeaten_trial_ids,
)

MAX_CONSECUTIVE_FAILURES = 20  # failed trials in a row that stop a stage (a broken model)
MAX_RETRIES = 3
# for the storage: a trial whose worker died is queued again, in its generation (its system
# attrs travel with it), up to MAX_RETRIES times
with warnings.catch_warnings():  # experimental in Optuna; relied on knowingly
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    retry_stale_trial = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


class _StopOnFailures:
    """A model or metric that fails every trial must not loop forever."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.last_reason = ""

    def __call__(self, study, trial):
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        self.last_reason = trial.user_attrs.get(record.FAIL_REASON_ATTR, self.last_reason)
        if self.tripped:
            study.stop()

    @property
    def tripped(self) -> bool:
        return self.count >= self.limit


class _PatienceStop:
    """Stage 2's ``--stage2-patience``: whether the study has run out of it
    (``patience.stopped``), worked out again only when another generation has completed; as a
    callback, it stops the study then."""

    def __init__(self, population: int, generations: int):
        self.population = population
        self.generations = generations
        self.checked_at: int | None = None  # complete generations at the last check
        self.outcome: dict | None = None

    def check(self, study) -> bool:
        if self.generations <= 0:  # off: no storage read a trial
            return False
        done = len(patience.complete_generations(study, self.population))
        if done != self.checked_at:
            self.checked_at = done
            self.outcome = patience.stopped(study, self.population, self.generations)
        return self.outcome is not None

    def __call__(self, study, trial):
        if self.check(study):
            study.stop()


def _stops_if_deleted(run_stage):
    """A study deleted under a running worker (``delete --force``) fails the next storage call,
    wherever it is (Optuna's ``optimize``, a progress line, the wait for other workers): one
    line instead of the storage's errors, and nothing is left to resume."""
    @functools.wraps(run_stage)
    def run_unless_deleted(ctx, study, *args, **kwargs):
        try:
            return run_stage(ctx, study, *args, **kwargs)
        except Exception:
            _stop_if_deleted(study)  # else the error is not about the study being gone
            raise

    return run_unless_deleted


def _stop_if_deleted(study: optuna.Study) -> None:
    try:
        gone = study.study_name not in optuna.get_all_study_names(storage_of(study))
    except Exception:  # noqa: BLE001 - the storage itself fails: its first error tells why
        return
    if gone:
        raise UsageError(f"study {study.study_name!r} was deleted while this worker ran it: "
                         "stopped") from None


def _heartbeat(study: optuna.Study) -> int | None:
    """The storage's heartbeat interval (None: no heartbeat, or a storage without them)."""
    interval = getattr(storage_of(study), "get_heartbeat_interval", None)
    return interval() if interval is not None else None


@_stops_if_deleted
def run(ctx: SearchContext, study: optuna.Study, trials: int, progress: bool = True,
        batch_size: int | None = None, score=None, callbacks=(),
        max_gflops: float | None = None,
        max_failures: int = MAX_CONSECUTIVE_FAILURES, later_trials: int = 0,
        deadline: float | None = None, stage2_patience: int = 0) -> bool:
    """Run until ``trials`` candidates are evaluated: COMPLETE trials, plus those the
    multi-fidelity pruner stopped early (a rerun resumes). ``max_failures`` failed trials in a
    row stop it with a UsageError. ``later_trials``: those of a stage to run after this one,
    for the progress lines' ETA. ``deadline`` (a ``time.monotonic()`` value): no trial starts
    after it; returns whether the target was reached (False: stopped there, a rerun resumes).
    A stage that reaches its target ends by confirming what the search can name
    (``confirm.confirm``: on noise it never searched on), unless a synthetic ``score`` stands
    in for the model's. ``stage2_patience`` (stage 2): generations in a row that found no
    cheaper point within the export's reach end it before its target (``patience``; recorded
    as the study's ``STAGE2_STOPPED_ATTR``), confirmed as at the target; 0: off.

    Other workers may stop this one early (their running trials make up the target); it then
    waits for them, and goes on if a trial of theirs failed or its worker died."""
    stage = study.user_attrs.get(record.STAGE_ATTR, 1)
    failures = _StopOnFailures(max_failures)
    callbacks = [failures, *callbacks]  # the objective stops the study at the target
    stop = _PatienceStop(ctx.config.population, stage2_patience) if stage == 2 else None
    if stop is not None:
        callbacks.append(stop)
    if progress:
        callbacks.append(ProgressPrinter(trials, label=f"stage {stage}", later=later_trials))
    record.note_run(study, trials, _heartbeat(study))
    interrupted: dict = {}
    objective = make_objective(ctx, stage, trials, batch_size, score, max_gflops, interrupted,
                               study.user_attrs.get(record.FID_BOUND_ATTR))
    def out_of_patience() -> bool:
        return stop is not None and stop.check(study)

    if stop is not None and not out_of_patience():  # a rerun searches on: not done any more
        _record_stop(study, None, trials)

    while fidelity.n_evaluated(study) < trials and not out_of_patience():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        try:
            study.optimize(objective, callbacks=callbacks, catch=(FIDError,), timeout=left)
        except KeyboardInterrupt:
            _requeue_interrupted(study, interrupted.get("trial"), ctx.space(stage).required_names)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker's heartbeat check failed this (slow) trial and queued it again
        except ValueError as err:  # the same, noticed as Optuna tells the trial's result
            if "Cannot tell a" not in str(err):
                raise
        except AssertionError as err:
            _raise_storage_failure(err)
        if failures.tripped:
            raise UsageError(f"{failures.count} trials in a row failed (last: "
                             f"{failures.last_reason or 'see the trials'}); the study is kept")
        if deadline is not None and time.monotonic() >= deadline and not out_of_patience():
            return fidelity.n_evaluated(study) >= trials
        _wait_for_other_workers(study, progress)
    if stop is not None:
        _record_stop(study, stop.outcome if out_of_patience() else None, trials)
    if score is None:
        confirm.confirm(ctx, study, progress, batch_size, deadline)
        if deadline is not None and time.monotonic() >= deadline and _unconfirmed(study):
            return False  # stopped by the deadline while confirming: a rerun confirms the rest
    return True


def _unconfirmed(study: optuna.Study) -> bool:
    from autodiff_optuna.search.results import linked_studies

    return bool(confirm.to_confirm(*linked_studies(study)))


def _record_stop(study: optuna.Study, outcome: dict | None, trials: int) -> None:
    """Keep why stage 2 ended before its target (``list`` shows it as done), or that it did
    not (a rerun with more patience, or none, searched on); and say it, as stage 1's end is
    said, ``--quiet`` or not."""
    evaluated = fidelity.n_evaluated(study)
    if evaluated >= trials:  # it reached its target, out of patience there or not
        outcome = None
    stored = {**outcome, "evaluated": evaluated} if outcome is not None else None
    if study.user_attrs.get(record.STAGE2_STOPPED_ATTR) != stored:
        study.set_user_attr(record.STAGE2_STOPPED_ATTR, stored)
    if outcome is not None:
        print(f"stage 2 ends after generation {outcome['after_generation']} ({evaluated} of "
              f"{trials} trials): {outcome['patience']} generation"
              f"{'s' * (outcome['patience'] != 1)} in a row found no cheaper point within the "
              "export's FID tolerance (--stage2-patience 0 searches on)", flush=True)


def _raise_storage_failure(err: AssertionError) -> None:
    """Optuna asserts while reporting a trial whose result it could not store (a database that
    became read-only): raise the storage's own error, which the CLI reports in one line."""
    cause = err.__context__
    if isinstance(cause, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
        raise cause from None
    raise err


def _wait_for_other_workers(study: optuna.Study, progress: bool, poll: float = 1.0) -> None:
    """Wait while trials of other workers run; a dead worker's trial is failed (and queued
    again) by the heartbeat check once its beats stop."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running and progress:
        print(f"waiting for {len(running)} running trial(s) of other workers (a killed worker's "
              "trial is retried once its heartbeat expires)", file=sys.stderr, flush=True)
    unbeaten: dict[int, float] = {}  # trial id -> when this process first saw it without a beat
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_stale_trials(study)
        _fail_unbeaten_trials(study, unbeaten)
        time.sleep(poll)


def _fail_unbeaten_trials(study: optuna.Study, seen: dict[int, float]) -> None:
    """``fail_stale_trials`` for the trials whose worker died before their first heartbeat
    (``unbeaten_trial_ids``): one seen running without a beat for the heartbeat's grace period,
    by this process's clock (``seen``: since when; a worker's own start stamp is its clock's),
    is failed and retried the same way (the storage's stale-trial callback)."""
    grace = heartbeat_grace(study)
    if grace is None:
        return
    now = time.monotonic()
    current = set(unbeaten_trial_ids(study))
    for trial_id in list(seen):
        if trial_id not in current:  # it beat, or ended
            del seen[trial_id]
    storage = storage_of(study)
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in current:
        if now - seen.setdefault(trial_id, now) <= grace:
            continue
        try:
            failed = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first, or it just finished
        if failed and retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(trial_id)))


def _requeue_interrupted(study: optuna.Study, number: int | None, names) -> None:
    """Optuna has failed the trial Ctrl-C interrupted: queue its candidate for the resume."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and all(n in trial.params for n in names):
        retry_stale_trial(study, trial)  # queued again with its generation, as a dead worker's
