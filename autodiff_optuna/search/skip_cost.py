"""What each (step, layer) skip costs in quality, measured once per stage-2 study.

Bit flips that turn on any layer at any step alike mostly ruin the child with a skip the model
cannot lose. Before stage 2 breeds, the stage-1 best schedule is sampled on a small batch of the
search's noise with the full network, then again with one layer skipped at one step, for every
(step position, layer). A skip's cost is how much farther its images' features are from the
real data's than the full network's are, by the Fréchet distance with diagonal covariances (a
full covariance is singular on so few images, and costly at Inception's 2048 features): a
distance to the data, not to the full network's images, because a skip at the first step may
change which image comes out without making it any worse. Mutation then turns a skip on with a
probability weighted by ``exp(-cost / median cost)`` (``variation.prior_weights``): cheap skips
are tried often, ruinous ones rarely; ``damage`` sums them into a child's predicted harm.
K x L samplings of a small batch, once per study: a sixteenth of a candidate's images (at most
``PRIOR_IMAGES``), so the prior costs about K x L / 16 candidates.
"""

import math

import numpy as np

from autodiff_optuna.metrics.fid import to_uint8
from autodiff_optuna.sampling.noise import SEARCH, draw
from autodiff_optuna.sampling.solvers import sample
from autodiff_optuna.search.encoding import Candidate
from autodiff_optuna.search.variation import RUINOUS  # not finite: still valid JSON

PRIOR_IMAGES = 64
MIN_PRIOR_IMAGES = 8  # fewer make the features' spread meaningless


def measure(ctx, candidate: Candidate, images: int | None = None) -> dict:
    """``{"timesteps", "layers", "cost"}``: ``cost[i][j]`` is how much farther from the data
    (``diagonal_distance``) the images are when layer ``layers[j]`` is skipped at the ``i``-th
    step of ``candidate`` (the rest of it run with the full network), 0 where no farther."""
    layers = list(ctx.costs.layers)
    steps = list(candidate.timesteps)
    if images is None:
        images = prior_images(ctx.config.samples)
    batch = draw(ctx.model, images, ctx.config.seed, SEARCH)
    solver = ctx.solver_of(candidate)

    def distance(skip=None) -> float:
        sampled = sample(ctx.model, steps, batch, solver, skip=skip)
        if not sampled.isfinite().all():
            return math.inf
        return diagonal_distance(ctx.scorer.features(to_uint8(sampled)), ctx.scorer.ref_mu,
                                 ctx.scorer.ref_sigma)

    full = distance()
    cost = []
    for i in range(len(steps)):
        row = []
        for layer in layers:
            value = distance([(layer,) if j == i else () for j in range(len(steps))]) - full
            row.append(max(0.0, value) if math.isfinite(value) else RUINOUS)
        cost.append(row)
    return {"timesteps": steps, "layers": layers, "cost": cost}


def prior_images(samples: int) -> int:
    """The batch each of the prior's samplings takes, for a study of ``samples`` images per
    candidate: a sixteenth of them, ``MIN_PRIOR_IMAGES`` to ``PRIOR_IMAGES``."""
    return min(PRIOR_IMAGES, max(MIN_PRIOR_IMAGES, samples // 16))


def diagonal_distance(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """The Fréchet distance between ``features`` and the reference, as if both covariances
    were diagonal: the squared distance of the means plus that of the standard deviations."""
    features = np.asarray(features, dtype=np.float64)
    std = np.sqrt(np.clip(np.diag(sigma), 0, None))
    return float(np.sum((features.mean(axis=0) - mu) ** 2)
                 + np.sum((features.std(axis=0) - std) ** 2))
