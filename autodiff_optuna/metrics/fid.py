"""FID through clean-fid: its batch feature extraction and Frechet distance, any feature network.

A ``FIDScorer`` holds one feature network and one set of reference statistics; build it once per
process (``scorer_for`` caches it) and call it once per candidate.
"""

import math
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.digits_features import DigitsFeatureNet
from autodiff_optuna.models.base import files_digest


class FIDError(RuntimeError):
    """FID could not be computed for these samples (non-finite features, a singular covariance)."""


@dataclass
class FIDScorer:
    feature_net: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> (n, d) features
    ref_mu: np.ndarray
    ref_sigma: np.ndarray
    name: str  # which features and statistics (with their digest): recorded with every study
    batch_size: int = 1000
    device: torch.device = torch.device("cpu")

    def features(self, images_uint8: torch.Tensor) -> np.ndarray:
        from cleanfid.fid import get_batch_features

        chunks = [get_batch_features(images_uint8[i:i + self.batch_size], self.feature_net,
                                     self.device)
                  for i in range(0, len(images_uint8), self.batch_size)]
        return np.concatenate(chunks).astype(np.float64)

    @property
    def feature_dim(self) -> int:
        return int(self.ref_mu.shape[0])

    @property
    def min_samples(self) -> int:
        """Fewer samples than feature dimensions give a singular covariance: no FID."""
        return self.feature_dim + 1

    @property
    def default_samples(self) -> int:
        return default_samples(self.feature_dim)

    def check_sample_count(self, n: int, flag: str = "--samples") -> None:
        if n < self.min_samples:
            raise UsageError(f"{flag} must exceed the FID feature dimension "
                             f"({self.feature_dim}): at least {self.min_samples}, got {n}")

    def __call__(self, images_uint8: torch.Tensor) -> float:
        return fid_from_features(self.features(images_uint8), self.ref_mu, self.ref_sigma)


def default_samples(feature_dim: int) -> int:
    """Images per FID where nothing else says: 1000, or twice the feature dimension where that
    is more (4096 for Inception's 2048 features)."""
    return max(1000, 2 * feature_dim)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] to uint8, as saving them to a PNG would: clean-fid scores images as
    they are stored, so quantisation is part of the metric."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def fid_from_features(feats: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance

    if not np.isfinite(feats).all():
        raise FIDError("features are not finite (the samples hold NaN or inf)")
    if len(feats) < 2:
        raise FIDError("FID needs at least 2 samples")
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    try:
        value = float(frechet_distance(mu, sigma, ref_mu, ref_sigma))
    except ValueError as err:  # clean-fid refuses a covariance root with a large imaginary part
        raise FIDError(str(err)) from err
    if not np.isfinite(value):
        raise FIDError(f"FID is {value}")
    return value


BOOTSTRAP_RESAMPLES = 10  # each an eigendecomposition of a feature-sized matrix


def resamples_for(feature_dim: int) -> int:
    """Bootstrap resamples where one number is reported to a user: 100 for small features (a
    resample costs little, and a standard deviation from 10 is off by a quarter), else
    ``BOOTSTRAP_RESAMPLES`` (Inception's 2048 features: seconds a resample)."""
    return 100 if feature_dim <= 256 else BOOTSTRAP_RESAMPLES


def fid_spread(feats: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray,
               resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """How far the FID of ``feats`` could move on another draw of as many images: the standard
    deviation of its FID over bootstrap resamples of the images (seeded: the same features give
    the same spread)."""
    return paired_spreads([feats], ref_mu, ref_sigma, resamples, seed)[0][0]


def paired_spreads(feature_sets: list[np.ndarray], ref_mu: np.ndarray, ref_sigma: np.ndarray,
                   resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> tuple[list[float], list[float]]:
    """Each set's FID spread (``fid_spread``), and the spread of the first set's FID minus each
    other set's, where row i of every set comes from the same noise (schedules sampled on one
    batch): one bootstrap that draws the same rows for all, so the noise the sets share cancels
    in their differences. That difference's spread is what says whether one schedule beats
    another on this noise; for schedules far apart it need not be below the two spreads combined
    as if independent. inf where a set is not finite or has fewer than 2 rows."""
    fids = _bootstrap_fids(feature_sets, ref_mu, ref_sigma, resamples, seed)
    if fids is None:
        return [math.inf] * len(feature_sets), [math.inf] * (len(feature_sets) - 1)
    return ([float(np.std(fids[:, i], ddof=1)) for i in range(len(feature_sets))],
            [float(np.std(fids[:, 0] - fids[:, i], ddof=1))
             for i in range(1, len(feature_sets))])


def _bootstrap_fids(feature_sets: list[np.ndarray], ref_mu: np.ndarray, ref_sigma: np.ndarray,
                    resamples: int, seed: int) -> np.ndarray | None:
    """FID of each feature set (of as many rows) over bootstrap resamples of its rows, the same
    rows drawn for every set: shape (resamples, sets); None where a set is not finite or has
    fewer than 2 rows. A resample's trace term is ``tr sqrt(R S R)`` with ``R`` the reference
    covariance's root, computed once: one symmetric eigendecomposition a resample instead of a
    general matrix root (the same value; the eigenvalues of S R R and R S R agree)."""
    sets = [np.asarray(f, dtype=np.float64) for f in feature_sets]
    if len({len(f) for f in sets}) > 1:
        raise ValueError("paired spreads draw the same rows of every set: give as many images "
                         "of each, from the same noise")
    if any(not np.isfinite(f).all() or len(f) < 2 for f in sets):
        return None
    values, vectors = np.linalg.eigh(np.asarray(ref_sigma, dtype=np.float64))
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    rng = np.random.default_rng(seed)
    fids = np.empty((resamples, len(sets)))
    for r in range(resamples):
        rows = rng.integers(0, len(sets[0]), len(sets[0]))
        for i, f in enumerate(sets):
            drawn = f[rows]
            mu, sigma = drawn.mean(0), np.cov(drawn, rowvar=False)
            covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma @ root), 0, None)).sum()
            fids[r, i] = (np.sum((mu - ref_mu) ** 2) + np.trace(sigma) + np.trace(ref_sigma)
                          - 2 * covmean)
    return fids


def load_reference_stats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (d,) and ``sigma`` (d, d) from an .npz, as clean-fid and ADM's reference batches
    store them; a missing, corrupt or malformed file is one UsageError line naming it."""
    if not path.is_file():
        raise UsageError(f"FID reference statistics not found: {path}")
    what = f"FID reference statistics {path}"
    try:
        stats = np.load(path)  # allow_pickle=False: a pickle is refused, never run
        if not isinstance(stats, np.lib.npyio.NpzFile):
            raise UsageError(f"{what}: not an .npz archive (of 'mu' and 'sigma' arrays)")
        with stats:
            if "mu" not in stats or "sigma" not in stats:
                raise UsageError(f"{what} holds no 'mu' and 'sigma' arrays")
            mu, sigma = stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, TypeError, zlib.error) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"cannot read {what} (an .npz of 'mu' and 'sigma'): {detail}") \
            from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not len(mu):
        raise UsageError(f"{what}: 'mu' must be a vector of d values and 'sigma' d x d, got "
                         f"shapes {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UsageError(f"{what} holds NaN or infinite values: no FID can be computed "
                         "against them")
    return mu, sigma


@cache
def digits_network(bundle_dir: Path) -> tuple[Callable, str]:
    """The bundled digits feature network (uint8 digits -> 64 features) and its name, by the
    digest of its weights."""
    weights = bundle_dir / "features.safetensors"
    if not weights.is_file():
        raise UsageError(f"the digits FID feature network {weights} is missing; "
                         "`make train-digits` rebuilds it")
    net = DigitsFeatureNet()
    net.load_state_dict(load_file(weights))
    net.eval()
    return net.features, f"digits-cnn64@{files_digest([weights])}"


@cache
def digits_scorer(bundle_dir: Path) -> FIDScorer:
    """The bundled digits feature network and the statistics of all 1,797 real digits."""
    features, _ = digits_network(bundle_dir)
    weights, stats = bundle_dir / "features.safetensors", bundle_dir / "reference_stats.npz"
    mu, sigma = load_reference_stats(stats)
    # the network and its statistics under one digest: the name studies have always recorded
    return FIDScorer(features, mu, sigma,
                     name=f"digits-cnn64:sklearn-digits-all@{files_digest([weights, stats])}")
