"""Multi-fidelity scoring: stop a bad candidate after a fraction of its images.

A candidate is sampled on growing prefixes of the study's fixed noise (``min_samples``, twice
that, ... up to ``samples``); after each prefix its FID is reported to the trial (the step is
the image count), and Optuna's ``PercentilePruner`` stops it when it is worse than the 40th
percentile of the complete trials at the same image count. FID is biased upward at small sample
counts, so values are only ever compared at equal counts, and a trial that finishes is scored on
all ``samples`` images exactly like one without pruning (the prefixes are the same noise), so
complete trials stay comparable whatever the pruner did.

Why a percentile of the complete trials: they are the ones the evolution keeps breeding from, so
a child is stopped once it is clearly not going to join the better of them. The median let too
many children through once the sampler bred well (fewer images saved at about the same held-out
FID); the 30th percentile saved more but ended worse.
Successive halving, which ranks a child against every trial that ever reached the rung, early
bad ones included, saved fewer images and ended worse. BENCHMARKS.md has the numbers.
"""

from __future__ import annotations  # torch in annotations only: imported where it runs

from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.storage.record import PRUNED_AT, STAGE1_TRIAL_ATTR

if TYPE_CHECKING:  # counting a study's evaluated trials (``list``) needs no torch
    from autodiff_optuna.metrics.fid import FIDScorer
    from autodiff_optuna.sampling import NoiseBatch
    from autodiff_optuna.search.encoding import Candidate

REDUCTION_FACTOR = 2  # each reported prefix is twice the previous one
STARTUP_TRIALS = 5  # complete trials before the pruner stops any
PRUNE_PERCENTILE = 40.0  # a child worse than this percentile of complete trials is stopped


def is_evaluated(trial: FrozenTrial) -> bool:
    """A candidate that was scored: in full (COMPLETE), or on part of its images before the
    pruner stopped it (PRUNED with reports). Surplus and duplicate trials are pruned before any
    image is sampled and are not."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.PRUNED and bool(trial.intermediate_values))


def is_carried(trial: FrozenTrial) -> bool:
    """A stage-2 trial that holds a stage-1 elite with its stage-1 scores: added when stage 2
    was made, never sampled in stage 2."""
    return STAGE1_TRIAL_ATTR in trial.user_attrs


def counts_toward_target(trial: FrozenTrial) -> bool:
    """Evaluated by this stage: the target (``--trials``, ``--stage2-trials``) counts new
    evaluations, so stage 1's elites carried into stage 2 are not among them."""
    return is_evaluated(trial) and not is_carried(trial)


def n_evaluated(study: optuna.Study) -> int:
    """How many trials count towards ``--trials``."""
    return sum(counts_toward_target(t) for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def rungs(samples: int, min_samples: int | None) -> list[int]:
    """Sample counts at which a candidate's FID is reported, before the full count."""
    if not min_samples:
        return []
    counts, n = [], min_samples
    while n < samples:
        counts.append(n)
        n *= REDUCTION_FACTOR
    return counts


def make_pruner(min_samples: int | None) -> optuna.pruners.BasePruner:
    if not min_samples:
        return optuna.pruners.NopPruner()
    # the standard spacings, queued first, always complete and give the percentile its first values
    return optuna.pruners.PercentilePruner(PRUNE_PERCENTILE, n_startup_trials=STARTUP_TRIALS,
                                           n_warmup_steps=0)


def score_in_rungs(trial: optuna.Trial, model, scorer: FIDScorer, candidate: Candidate,
                   batch: NoiseBatch, solver: str, counts: list[int],
                   batch_size: int | None = None, prune: bool = True) -> float:
    """FID on all of ``batch``, reporting it at each of ``counts`` images first; raises
    ``TrialPruned`` (after recording how many images were spent) when the pruner says so,
    unless not to ``prune`` (a baseline: it reports, and is never stopped)."""
    import numpy as np
    import torch

    from autodiff_optuna.metrics.fid import FIDError, fid_from_features, to_uint8
    from autodiff_optuna.sampling import sample

    total = len(batch.noise)
    features, done = [], 0
    for n in [*counts, total]:
        images = sample(model, candidate.timesteps, batch.subset(done, n), solver, batch_size,
                        candidate.skip)
        if not torch.isfinite(images).all():
            raise FIDError("samples are not finite (NaN or inf)")
        features.append(scorer.features(to_uint8(images)))
        done = n
        fid = fid_from_features(np.concatenate(features), scorer.ref_mu, scorer.ref_sigma)
        if n < total:
            trial.report(fid, n)
            if prune and trial.should_prune():
                trial.set_user_attr(PRUNED_AT, n)
                raise optuna.TrialPruned(f"FID {fid:.3f} at {n} images")
    return fid
