"""The trial function: one candidate, decoded from the trial, sampled on the study's fixed
noise and scored, unless another worker already makes it redundant."""

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.metrics.scoring import score_schedule
from autodiff_optuna.sampling import SEARCH, draw
from autodiff_optuna.search import fidelity, objectives
from autodiff_optuna.search.context import SearchContext
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.storage.optuna_internals import cached_trials
from autodiff_optuna.storage.record import (
    DUPLICATE_OF_ATTR,
    FAIL_REASON_ATTR,
    GFLOPS_ATTR,
    RULES_ATTR,
    SKIP_ATTR,
    SPACING_ATTR,
    SURPLUS_ATTR,
    TIMESTEPS_ATTR,
)

# Stage 2's constraint on FID: a candidate worse than the uniform schedule is never offered as
# a result, so NSGA-II ranks it behind every feasible one and breeds from it last (without it,
# the front's cheap end, however ruined, is an elite, and its children are ruined too)
FID_CONSTRAINT = "fid"
GFLOPS_CONSTRAINT = "gflops"  # above --max-gflops: how far


def fid_constraint(fid: float, bound: float) -> float:
    """Optuna's constraint value (feasible at 0 or less) for ``fid`` under ``bound``; a
    non-finite FID is as infeasible as the largest float."""
    return fid - bound if math.isfinite(fid) else 1e308


def make_objective(ctx: SearchContext, stage: int, target: int | None = None,
                   batch_size: int | None = None, score=None, max_gflops: float | None = None,
                   interrupted: dict | None = None, fid_bound: float | None = None):
    """The trial function. ``score(candidate) -> FID`` defaults to sampling the model on the
    study's fixed noise and scoring it (the storage benchmark passes a synthetic one).
    A Ctrl-C inside a trial leaves its number in ``interrupted["trial"]``. ``fid_bound``
    (stage 2): a trial whose FID is above it is infeasible (``FID_CONSTRAINT``)."""
    batch = draw(ctx.model, ctx.config.samples, ctx.config.seed, SEARCH)
    space = ctx.space(stage)
    interrupted = interrupted if interrupted is not None else {}
    rungs = fidelity.rungs(ctx.config.samples, ctx.config.min_samples) if stage == 1 else []

    def score_candidate(candidate: Candidate, trial: optuna.Trial) -> float:
        if score is not None:
            return score(candidate)
        # the spacings queued first (standard, DP) are the baselines every result is compared
        # with: scored on all images, never stopped early; they report at each rung, the
        # pruner's first values there (without them its percentile rested on the first bred
        # trial or two, and stopped up to 90 of 100 candidates)
        if rungs:
            return fidelity.score_in_rungs(trial, ctx.model, ctx.scorer, candidate, batch,
                                           ctx.solver_of(candidate), rungs, batch_size,
                                           prune=SPACING_ATTR not in trial.user_attrs)
        return score_schedule(ctx.model, ctx.scorer, candidate.timesteps, batch,
                              ctx.solver_of(candidate), batch_size, skip=candidate.skip)

    def objective(trial: optuna.Trial):
        try:
            return evaluate(trial)
        except KeyboardInterrupt:
            interrupted["trial"] = trial.number
            raise

    def evaluate(trial: optuna.Trial):
        candidate = space.suggest(trial)
        # before sampling, the study as the sampler just read it: saves a storage read per
        # trial. The snapshot can only be behind (a trial it shows running may have stopped
        # since, never the reverse), so the surplus check is at worst stricter; the check after
        # sampling reads afresh, and alone keeps racing twins from both completing.
        _check_concurrent_workers(trial, space, candidate, target, fresh=False)
        gflops = ctx.costs.gflops(candidate.skip)
        trial.set_user_attr(TIMESTEPS_ATTR, list(candidate.timesteps))
        if candidate.rules:
            trial.set_user_attr(RULES_ATTR, [rule.to_json() for rule in candidate.rules])
        if stage == 2:
            trial.set_user_attr(SKIP_ATTR, [list(s) for s in candidate.skip])
            trial.set_user_attr(GFLOPS_ATTR, gflops)
            if max_gflops is not None:  # <= 0 is feasible; NSGA-II ranks infeasible ones last
                trial.set_constraint(GFLOPS_CONSTRAINT, gflops - max_gflops)
        try:
            fid = score_candidate(candidate, trial)
        except FIDError as err:
            trial.set_user_attr(FAIL_REASON_ATTR, str(err))
            raise
        except optuna.TrialPruned:  # stopped early by the pruner: it counts towards the target
            _stop_at_target(trial, trial.study.get_trials(deepcopy=False), target)
            raise
        if stage == 2 and fid_bound is not None:
            trial.set_constraint(FID_CONSTRAINT, fid_constraint(fid, fid_bound))
        live = _check_concurrent_workers(trial, space, candidate, target=None)  # a twin won?
        _stop_at_target(trial, live, target)
        return objectives.values(stage, fid, gflops)

    return objective


def _stop_at_target(trial: optuna.Trial, trials: list[FrozenTrial], target: int | None) -> None:
    """Stop the study when this trial completes its target (MaxTrialsCallback's job, without
    another read of the study)."""
    number = trial.number
    others = sum(fidelity.counts_toward_target(t) for t in trials if t.number != number)
    if target is not None and others + 1 >= target:
        trial.study.stop()


def _check_concurrent_workers(trial: optuna.Trial, space: CandidateSpace, candidate: Candidate,
                              target: int | None, fresh: bool = True) -> list[FrozenTrial]:
    """Prune a trial that another worker makes redundant.

    - Surplus (checked before sampling): the trials numbered before it that are finished,
      running or queued already make up the target. Trial numbers come from the storage, so the
      study ends with exactly ``target`` complete trials whatever the workers' timing.
    - Duplicate (checked before and after sampling): another trial with the same candidate is
      complete, or running with a lower number. Every trial writes its parameters before its
      first check, so of two racing twins at most one completes. (Twins are found by their
      canonical parameters, which the EvolutionarySampler always writes; a generic sampler's
      non-canonical twin of a candidate is not caught.)
    """
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    # not fresh: the snapshot Optuna caches for this trial's sampler (read after the trial was
    # created, so it holds every trial numbered before it), or a fresh read if there is none
    trials = (trial.study.get_trials(deepcopy=False, states=states) if fresh else
              cached_trials(trial.study, states))
    live = [t for t in trials if t.state != TrialState.PRUNED or fidelity.is_evaluated(t)]
    number = trial.number  # a property chain: read once, not once per stored trial
    if target is not None and sum(t.number < number and not fidelity.is_carried(t)
                                  for t in live) >= target:
        trial.set_user_attr(SURPLUS_ATTR, "the target was reached by other workers")
        trial.study.stop()
        raise optuna.TrialPruned("surplus")
    # the sampler writes canonical parameters, so a twin's are equal to the letter (a dict
    # comparison first: this runs twice per trial over the whole study, and twins are rare)
    params = space.encode(candidate)
    for t in live:
        if t.params != params or t.number == number or t.state == TrialState.WAITING:
            continue
        if fidelity.is_evaluated(t) or t.number < number:
            trial.set_user_attr(DUPLICATE_OF_ATTR, t.number)
            raise optuna.TrialPruned(f"duplicate of trial {t.number}")
    return live
