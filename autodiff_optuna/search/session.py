"""One ``study`` command's run: the stages it asks for, with one ETA over both, a line when
stage 1 ends, a stop between trials at its ``--timeout``, and the search's result.

Its lines go to stdout (``study --json`` points stdout at stderr around it), but for the
lines that end a run early (a timeout, Ctrl-C), which go to stderr.
"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import sqlalchemy

from autodiff_optuna.errors import UsageError, one_line, printable
from autodiff_optuna.search.config import Targets
from autodiff_optuna.search.context import SearchContext
from autodiff_optuna.search.fidelity import n_evaluated
from autodiff_optuna.search.progress import remaining_stage2, resume_line, stage_done_line
from autodiff_optuna.search.results import StudyResult, study_result
from autodiff_optuna.search.run import run
from autodiff_optuna.search.stages import (
    check_stage1,
    check_stage2,
    load_stage1,
    open_stage1,
    open_stage2,
)
from autodiff_optuna.storage import record, writable_storage

STAGES = {"1": (1,), "2": (2,), "both": (1, 2)}  # ``--stage``'s choices


@dataclass(frozen=True)
class Plan:
    """What a ``study`` command runs: its stages (``--stage``: 1, 2 or both), stage 2's budget,
    its time limit, whether it prints a line per trial, and its arguments as given (to say how
    to resume)."""

    stage: str
    max_gflops: float | None
    timeout: float | None
    progress: bool
    argv: tuple[str, ...]


def run_study(ctx: SearchContext, name: str, storage, targets: Targets, plan: Plan,
              before_search: Callable[[], None] | None = None) -> StudyResult | None:
    """Run (or resume) the search ``name``; its result, or None where ``--timeout`` stopped it
    between trials (a line says so, and how to go on). Ctrl-C prints the command that resumes
    it, and exits 130; a database failure mid-search is one UsageError line. What the stored
    studies refuse is refused first; then ``before_search`` runs (``study``'s estimate, which
    times the model: a refused resume times nothing)."""
    config = ctx.config
    storage = writable_storage(storage)
    _check_resumable(ctx, name, storage, plan)
    if before_search is not None:
        before_search()
    stage1 = (load_stage1 if plan.stage == "2" else open_stage1)(ctx, name, storage)
    print(f"study {name!r}: {config.model}, {config.steps} steps, {config.solver_described}, "
          f"{config.samples} samples/candidate; stage {plan.stage}", flush=True)
    try:
        if not _run_stages(ctx, plan, stage1, storage, targets):
            return None
    except KeyboardInterrupt:
        print("\n" + printable(resume_line(name, list(plan.argv))), file=sys.stderr)
        raise SystemExit(130) from None
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise UsageError(f"the study database failed during the search ({one_line(err)}); "
                         "completed trials are kept: rerun the same command to resume") from None
    return study_result(stage1)


def _check_resumable(ctx: SearchContext, name: str, storage, plan: Plan) -> None:
    """Refuse what the stages ``plan`` asks for would refuse, before anything is timed,
    sampled or created: a stored study of either stage that is not ours or was made with
    another configuration, a ``--max-gflops`` nothing can meet (not after stage 1 ran its
    trials, nor after ``study``'s estimate timed the model). Nothing is written."""
    check_stage1(ctx, name, storage)
    if 2 in STAGES[plan.stage]:
        check_stage2(ctx, name, storage, plan.max_gflops)


def _run_stages(ctx, plan: Plan, stage1, storage, targets: Targets) -> bool:
    """The stages ``plan`` asks for. False: ``--timeout`` stopped them between trials."""
    deadline = None if plan.timeout is None else time.monotonic() + plan.timeout
    if 1 in STAGES[plan.stage]:
        later = remaining_stage2(stage1, targets.stage2_trials) if plan.stage == "both" else 0
        started, before = time.monotonic(), n_evaluated(stage1)
        if not run(ctx, stage1, targets.trials, progress=plan.progress, later_trials=later,
                   deadline=deadline):
            return _timed_out(plan, stage1, targets.trials, stage1.study_name)
        seconds = None if before >= targets.trials else time.monotonic() - started
        print(stage_done_line(stage1, seconds), flush=True)
    if 2 in STAGES[plan.stage]:
        stage2 = open_stage2(ctx, stage1, storage, plan.max_gflops)
        # with a budget, stage 2 searches for it: patience would end it at what it has
        patience = targets.stage2_patience if plan.max_gflops is None else 0
        if not run(ctx, stage2, targets.stage2_trials, progress=plan.progress,
                   max_gflops=plan.max_gflops, deadline=deadline, stage2_patience=patience):
            return _timed_out(plan, stage2, targets.stage2_trials, stage1.study_name)
    return True


def _timed_out(plan: Plan, study, target: int, name: str) -> bool:
    """The line a search stopped by ``--timeout`` ends with: where it is, and how to go on."""
    stage = record.stage_of(study.user_attrs)
    print(f"stopped by --timeout {plan.timeout:g}s, between trials: stage {stage} has "
          f"{n_evaluated(study)} of {target} trials; rerun the same command to resume study "
          f"{printable(name)!r}", file=sys.stderr, flush=True)
    return False
