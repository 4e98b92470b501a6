"""Scoring one candidate: sample from the model on fixed noise, then FID."""

import numpy as np
import torch

from autodiff_optuna.metrics.fid import (
    FIDError,
    FIDScorer,
    fid_from_features,
    fid_spread,
    to_uint8,
)
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling import NoiseBatch, Schedule, sample


def sample_features(model: DiffusionModel, scorer: FIDScorer, timesteps: Schedule,
                    batch: NoiseBatch, solver: str, batch_size: int | None = None,
                    skip=None) -> np.ndarray:
    """The scorer's features of the samples ``timesteps`` (skipping ``skip``'s layers per step)
    produces from ``batch``, one row per noise of the batch; FIDError if it has none."""
    images = sample(model, timesteps, batch, solver, batch_size, skip)
    if not torch.isfinite(images).all():
        raise FIDError("samples are not finite (NaN or inf)")
    return scorer.features(to_uint8(images))


def score_schedule(model: DiffusionModel, scorer: FIDScorer, timesteps: Schedule,
                   batch: NoiseBatch, solver: str, batch_size: int | None = None,
                   skip=None) -> float:
    """FID of the samples ``timesteps`` (skipping ``skip``'s layers per step) produces from
    ``batch``; FIDError if it has none."""
    features = sample_features(model, scorer, timesteps, batch, solver, batch_size, skip)
    return fid_from_features(features, scorer.ref_mu, scorer.ref_sigma)


def score_with_spread(model: DiffusionModel, scorer: FIDScorer, timesteps: Schedule,
                      batch: NoiseBatch, solver: str, batch_size: int | None = None,
                      skip=None) -> tuple[float, float]:
    """``score_schedule``'s FID and its spread (``fid.fid_spread``: how far another draw of as
    many images could move it), from one sampling."""
    features = sample_features(model, scorer, timesteps, batch, solver, batch_size, skip)
    return (fid_from_features(features, scorer.ref_mu, scorer.ref_sigma),
            fid_spread(features, scorer.ref_mu, scorer.ref_sigma))
