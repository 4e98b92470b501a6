"""FID reference statistics made here, for any model: of a folder of real images, or of the
model's own many-step samples. A small functional API in clean-fid's manner.

- ``reference_from_images(folder, features, cache_dir)``: clean-fid's statistics of a folder
  (``--ref-images DIR``), computed by clean-fid's own code (its file listing, its
  ``ResizeDataset`` and resizer in the features' mode, ``get_files_features``; ``mu`` and
  ``sigma`` as its ``make_custom_stats`` takes them) with the Inception network of the scorer
  (``metrics.inception.InceptionFeatures``). They are cached in ``cache_dir`` under a name made of
  the images' content digest, the network's digest and the mode: a rerun, or another folder
  holding the same images, reuses them.
- ``reference_from_teacher(model, features, steps, n, seed)``: statistics of the model's own
  ``steps``-step samples (uniform spacing, ``ddim<steps>``) on held-out noise and prompts
  (``--ref-teacher N``), cached alike when a ``cache_dir`` is given.

Both return a ``Reference`` (``mu, sigma, name``); ``name`` says what the statistics are of, for
the scorer's recorded name (``FIDScorer.name``). A folder that is missing, holds no more images
than the feature dimension, or holds an image that cannot be read is one ``UsageError`` line.
"""

import glob
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.metrics.fid import load_reference_stats, to_uint8
from autodiff_optuna.models.base import files_digest
from autodiff_optuna.models.files import models_dirs
from autodiff_optuna.sampling import HELDOUT, draw, sample
from autodiff_optuna.sampling.schedules import uniform

# held-out noise of this seed offset: `evaluate` at the study's seed draws other (noise, prompt)
# pairs than the teacher's samples it is compared against
TEACHER_SEED_OFFSET = 1 << 20
TEACHER_CHUNK = 256  # images sampled, decoded and featurised at a time: memory stays flat
# the teacher's noise: this seed of that offset stream, whatever the study's seed, so that a
# model's teacher statistics are one scorer for every study, evaluate and report
TEACHER_SEED = 0
TEACHER_SOLVER = "dpmpp2m"  # many steps of DPM-Solver++(2M): the model at its best


def stats_cache_dir() -> Path:
    """Where statistics made here are kept: ``fid-stats/`` in the first models directory."""
    return models_dirs()[0] / "fid-stats"


class Reference(NamedTuple):
    mu: np.ndarray  # (d,)
    sigma: np.ndarray  # (d, d)
    name: str  # "ref-images@<digest>" | "ref-teacher@<digest>*<steps>"


# ---- a folder of real images -----------------------------------------------------------------

def resolve_images(override: str | None, remote=None) -> Path:
    """The reference folder: ``--ref-images DIR`` where given, else ``remote.name`` (a folder)
    in the models directories; missing is one line with its public URL and where it goes."""
    if override:
        folder = Path(override).expanduser()
        if folder.is_dir():
            return folder
        hint = f"; {remote.what}: {remote.url}" if remote is not None else ""
        state = "is not a folder" if folder.exists() else "no such folder"
        raise UsageError(f"--ref-images {override}: {state} (a folder of real images{hint})")
    if remote is None:
        raise UsageError("no reference images: pass --ref-images DIR (a folder of real images)")
    for directory in models_dirs():
        if (directory / remote.name).is_dir():
            return directory / remote.name
    raise UsageError(f"missing {remote.name} ({remote.what}): download {remote.url} and unzip it "
                     f"into {models_dirs()[0]} (or pass {remote.flag} DIR)")


def image_files(folder) -> list[str]:
    """The files clean-fid's ``get_folder_features`` reads from a folder: its extensions, any
    depth, sorted."""
    from cleanfid.utils import EXTENSIONS

    return sorted(file for ext in EXTENSIONS
                  for file in glob.glob(os.path.join(str(folder), f"**/*.{ext}"), recursive=True))


def _check_links(files: list[str], folder: Path) -> None:
    """A symbolic link whose target is gone is listed like an image but cannot be read: one
    line naming it, before any work."""
    for file in files:
        if not os.path.exists(file):
            what = (f"a symbolic link to {os.readlink(file)}, which does not exist"
                    if os.path.islink(file) else "no longer there")
            raise UsageError(f"--ref-images {folder}: {file} is {what}")


def reference_from_images(folder, features, cache_dir, num_workers: int = 0,
                          batch_size: int | None = None) -> Reference:
    """clean-fid statistics of the images in ``folder`` under ``features`` (an
    ``InceptionFeatures``, or a scorer built on one), computed once and cached in
    ``cache_dir``."""
    features = getattr(features, "feature_net", features)
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--ref-images {folder}: no such folder")
    files = image_files(folder)
    _check_links(files, folder)
    dim = feature_dim(features)
    if len(files) <= dim:
        raise UsageError(f"--ref-images {folder} holds {len(files)} images: FID needs more than "
                         f"its feature dimension ({dim}), at least {dim + 1}")
    digest = files_digest(files)
    name = f"ref-images@{digest}"
    cached = Path(cache_dir) / f"ref-images-{digest}-{module_digest(features.base)}-" \
                               f"{features.mode}.npz"
    hit = _load_cached(cached)
    if hit is not None:
        return Reference(*hit, name)
    feats = folder_features(files, features, num_workers, batch_size)
    # exactly make_custom_stats's: the mean of clean-fid's float32 features, their covariance
    mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
    save_stats(cached, mu, sigma)
    return Reference(mu.astype(np.float64), sigma.astype(np.float64), name)


def folder_features(files: list[str], features, num_workers: int = 0,
                    batch_size: int | None = None) -> np.ndarray:
    """clean-fid's features of ``files`` (its dataset, resizer and batching) through the
    network of ``features``; an image that cannot be read is one line naming it."""
    from cleanfid.fid import get_files_features

    try:
        return get_files_features(files, _CleanFidNet(features), num_workers=num_workers,
                                  batch_size=batch_size or features.batch_size,
                                  device=features.device, mode=features.mode, verbose=False)
    except Exception as err:  # noqa: BLE001 (PIL, numpy and the DataLoader raise many types)
        culprit = _unreadable(files)
        if culprit is not None:
            raise UsageError(culprit) from None
        raise UsageError(f"cannot compute the features of the reference images "
                         f"({Path(files[0]).parent}...): {one_line(err)}") from None


class _CleanFidNet:
    """``InceptionFeatures``' network as clean-fid's ``InceptionV3W`` calls it: the batch comes
    from clean-fid's dataset, already resized in clean mode (then normalised here) and passed
    as it is in legacy_tensorflow mode (the network resizes inside)."""

    def __init__(self, features):
        self.base, self.mode = features.base, features.mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "clean":
            return self.base.layers.forward((x - 128) / 128).reshape(len(x), -1)
        return self.base(x, return_features=True).reshape(len(x), -1)


def _unreadable(files: list[str]) -> str | None:
    """The first file clean-fid's dataset could not read, as one line (None: all read)."""
    from PIL import Image

    for file in files:
        try:
            if file.endswith(".npy"):
                np.load(file)
            else:
                with Image.open(file) as image:
                    image.convert("RGB")
        except Exception as err:  # noqa: BLE001
            return f"cannot read reference image {file}: {one_line(err)}"
    return None


# ---- the model's own samples -----------------------------------------------------------------

def reference_from_teacher(model, features, steps: int, n: int, seed: int = TEACHER_SEED,
                           solver: str = TEACHER_SOLVER, cache_dir=None,
                           batch_size: int | None = None, stream=None) -> Reference:
    """Statistics of ``n`` samples of ``model`` over the uniform ``steps``-step schedule, on the
    held-out noise (and prompts) of ``seed + TEACHER_SEED_OFFSET``. ``features``: uint8 images
    (n, C, H, W) -> (n, d) features (a scorer's ``feature_net``, or the scorer). Made here (not
    cached), they print a line per chunk with an ETA, as a study does per trial, on ``stream``
    (default stderr: stdout may be a command's JSON)."""
    features = getattr(features, "feature_net", features)
    if not 1 <= steps <= model.num_train_timesteps:
        raise UsageError(f"--ref-teacher must be between 1 and the model's "
                         f"{model.num_train_timesteps} training steps, got {steps}")
    dim = feature_dim(features, model.image_shape)
    if n <= dim:
        raise UsageError(f"the teacher's statistics need more samples than the FID feature "
                         f"dimension ({dim}): at least {dim + 1}, got {n}")
    key = json.dumps([model.fingerprint, steps, n, seed, solver, _features_digest(features)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"ref-teacher@{digest}*{steps}"  # the step count, for the flag a refusal names
    cached = None if cache_dir is None else Path(cache_dir) / f"ref-teacher-{digest}.npz"
    hit = _load_cached(cached)
    if hit is not None:
        return Reference(*hit, name)
    schedule = uniform(steps, model.num_train_timesteps)
    batch = draw(model, n, seed + TEACHER_SEED_OFFSET, HELDOUT)
    chunks = []
    progress = _Progress(n, stream)
    print(f"FID reference: {n} samples of {getattr(model, 'name', 'the model')}, {steps} steps "
          f"of {solver} on held-out noise (made once{' and cached' if cache_dir else ''})",
          file=progress.stream, flush=True)
    for start in range(0, n, TEACHER_CHUNK):
        x = sample(model, schedule, batch.subset(start, start + TEACHER_CHUNK), solver,
                   batch_size)
        if not torch.isfinite(x).all():
            raise UsageError(f"the model's {steps}-step samples are not finite (NaN or inf): "
                             "no teacher statistics")
        chunks.append(_features_array(features, to_uint8(x)))
        progress.line(min(start + TEACHER_CHUNK, n))
    feats = np.concatenate(chunks)
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    if cached is not None:
        save_stats(cached, mu, sigma)
    return Reference(mu, sigma, name)


class _Progress:
    """The teacher's progress lines: images made of the total, the chunk's time and the ETA."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self._started = self._last = time.monotonic()

    def line(self, done: int) -> None:
        now = time.monotonic()
        eta = (now - self._started) / done * (self.total - done)
        print(f"teacher [{done:>{len(str(self.total))}}/{self.total}] images  "
              f"({now - self._last:.1f}s, ETA {_duration(eta)})", file=self.stream, flush=True)
        self._last = now


def _duration(seconds: float) -> str:
    """As a study's progress lines write it (search.progress.duration, a layer above)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ---- shared ----------------------------------------------------------------------------------

def feature_dim(features, shape=(3, 16, 16)) -> int:
    """The feature dimension of ``features``, from two blank images of ``shape``."""
    return int(_features_array(features, torch.zeros((2, *shape), dtype=torch.uint8)).shape[1])


def _features_array(features, images_uint8: torch.Tensor) -> np.ndarray:
    """(n, d) float64 features, computed as clean-fid's ``get_batch_features`` does (no
    autograd, fetched to the CPU)."""
    with torch.no_grad():
        feats = features(images_uint8)
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    return np.asarray(feats, dtype=np.float64)


def module_digest(module: torch.nn.Module) -> str:
    """A short SHA-256 of a network's parameters and buffers (names, shapes and values): the
    network's identity, whatever file it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted({**dict(module.named_parameters()),
                                **dict(module.named_buffers())}.items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def _features_digest(features) -> str:
    """The identity of a feature network: its module's digest and mode where it has them
    (``InceptionFeatures``; a bound method of a module), else its type."""
    base = getattr(features, "base", None) or getattr(features, "__self__", None) or features
    mode = getattr(features, "mode", "")
    if isinstance(base, torch.nn.Module):
        return f"{module_digest(base)}:{mode}"
    return f"{type(features).__qualname__}:{mode}"


def save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """``mu`` and ``sigma`` as an .npz clean-fid and ``load_reference_stats`` read, with fixed
    zip timestamps (the same statistics are the same bytes, so a scorer's digest of the file is
    stable), written under a temporary name and renamed (a concurrent reader never sees half)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
            for key, value in (("mu", mu), ("sigma", sigma)):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
        partial.replace(path)
    except OSError as err:
        raise UsageError(f"cannot write FID reference statistics to {path}: "
                         f"{err.strerror or err}") from None


def _load_cached(path: Path | None):
    """Cached statistics, or None where there are none (or only an unreadable file: they are
    computed again and the file replaced)."""
    if path is None or not path.is_file():
        return None
    try:
        return load_reference_stats(path)
    except UsageError:
        return None


