"""Deleting a search: what ``delete NAME`` removes (``results.deletion_plan``), refused while a
worker runs it, and removed in an order a delete killed part-way can be rerun from.

A stage 2 deleted alone is first unlinked from its stage 1, whose stored result is then
recomputed without it (``keep``: the caller's keeper of a result, which also writes the
dashboard's note). A study a killed ``study`` command left half made is deletable too, under
the creation lock that workers make studies under.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from autodiff_optuna.errors import UsageError
from autodiff_optuna.search.results import (
    StudyResult,
    deletion_plan,
    half_made,
    heartbeat_of,
    live_trials,
    study_result,
)
from autodiff_optuna.storage import (
    DEFAULT_STORAGE,
    creation_lock,
    lockable,
    open_storage,
    record,
)
from autodiff_optuna.storage.optuna_internals import study_id


@dataclass(frozen=True)
class Plan:
    """What ``delete`` removes, in order, and which of them were half made when planned (a
    killed study command's: ``results.half_made``), deleted only if they still are."""
    studies: list[optuna.Study]
    half_made: frozenset[str]


def plan(url: str | None, name: str, force: bool) -> Plan:
    """The studies ``delete`` removes, in order, found and checked through read-only openings
    (a mistyped SQLite path creates no file, and a refused delete writes nothing); refused
    while a trial of them runs, unless ``force``."""
    studies = deletion_plan(open_storage(url), name)
    half = frozenset(s.study_name for s in studies if half_made(s))
    if not force:
        _refuse_while_running(url, studies)
        if half and not lockable(url or DEFAULT_STORAGE):
            raise UsageError(f"study {sorted(half)[0]!r} is half made, and this database cannot "
                             "be locked against a study command making it: stop any study "
                             "command on it, then pass --force")
    return Plan(studies, half)


def _refuse_while_running(url: str | None, studies: list[optuna.Study]) -> None:
    """A study deleted under a live worker would stop it mid-trial: refused while any trial
    runs whose worker still beats, by the grace period the workers' heartbeat gives."""
    storage = open_storage(url, heartbeat=heartbeat_of(studies, record.DEFAULT_HEARTBEAT))
    live = live_trials([optuna.load_study(study_name=study.study_name, storage=storage)
                        for study in studies])
    if live:
        raise UsageError(f"{live[0]} is running" + (f" (and {len(live) - 1} more)" if live[1:]
                                                    else "")
                         + ": stop its worker first, or pass --force to delete it under the "
                           "worker (which then stops)")


def delete(planned: Plan, url: str | None, keep: Callable[[StudyResult], None]) -> None:
    """Delete ``planned.studies`` in their order. A half-made one is checked to be so still
    under the creation lock: not one a study command has made since (or is making)."""
    storage = open_storage(url, writable=True)
    with creation_lock(storage) as locked:
        for study in planned.studies:
            if study.study_name in planned.half_made:
                _check_still_half_made(study, storage, locked)
        _delete(planned.studies, storage, keep)


def _check_still_half_made(planned: optuna.Study, storage, locked: bool) -> None:
    name = planned.study_name
    if not locked:  # no lock to take: plan() let it through on --force alone
        return
    try:
        now = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # deleted meanwhile
        return
    if study_id(now) != study_id(planned) or not half_made(now):
        raise UsageError(f"study {name!r} was made meanwhile by a study command: not deleted "
                         "(run delete again to delete it as it is now)")


def _delete(studies: list[optuna.Study], storage, keep: Callable[[StudyResult], None]) -> None:
    names = optuna.get_all_study_names(storage)
    for study in studies:
        if study.study_name not in names:  # deleted meanwhile, by another delete
            continue
        attrs = study.user_attrs
        stage1 = attrs.get(record.STAGE1_ATTR)  # a half-made stage 2 may not name it yet
        if len(studies) == 1 and record.stage_of(attrs) == 2 and stage1 in names:
            _unlink_stage2(stage1, study.study_name, storage, keep)
        with contextlib.suppress(KeyError):  # deleted meanwhile by another delete
            optuna.delete_study(study_name=study.study_name, storage=storage)


def _unlink_stage2(stage1_name: str, stage2_name: str, storage,
                   keep: Callable[[StudyResult], None]) -> None:
    """Stage 1 no longer names its stage 2, and its stored result is recomputed without it."""
    stage1 = optuna.load_study(study_name=stage1_name, storage=storage)
    if not record.is_ours(stage1.user_attrs):
        return
    if record.linked_stage2_name(stage1.user_attrs) == stage2_name:
        stage1.set_user_attr(record.STAGE2_ATTR, None)
    try:
        result = study_result(stage1)
    except UsageError:  # nothing complete: nothing stored to correct
        return
    keep(result)
