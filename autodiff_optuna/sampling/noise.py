"""Common random numbers: every candidate of a study is scored on the same noise and labels.

The search and held-out evaluation draw from disjoint seed streams (even and odd generator seeds),
so ``evaluate`` checks a schedule on noise that no study, whatever its seed, ever searched on. A
third stream, the teacher's, feeds the trajectory that ``trajectory_dp`` fits schedules to: it
comes from another generator (numpy's PCG64 keyed by the seed and the stream), since torch's CPU
generator keeps 32 bits of its seed and both parities are taken. A fourth, the confirmation
stream, re-scores the candidates a study may name as its result (``search.confirm``) on noise the
search never optimised: numpy's PCG64 again, keyed apart from the teacher's.
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling.limits import (  # noqa: F401 - the names samplers import from here
    MAX_IMAGES,
    MAX_SEED,
    check_count,
    check_seed,
)

SEARCH, HELDOUT, TEACHER, CONFIRM = "search", "heldout", "teacher", "confirm"
TEACHER_KEY = 0x7EAC4E2  # keys the teacher's generator apart from any other use of numpy's
CONFIRM_KEY = 0xC0F1A3  # keys the confirmation stream apart from the teacher's
BYTES_PER_VALUE = 4  # float32
# the noise, the images collected from it and their uint8 copy live at once: about three float32
# copies of the images
SAMPLING_COPIES = 3


def check_fits(model: DiffusionModel, n: int, flag: str, copies: int = SAMPLING_COPIES) -> None:
    """Refuse, in one line, more images of ``model`` than this machine's memory holds at once
    (the noise is drawn whole and the images are collected whole: one float32 copy of the
    samples, ``copies - 1`` of the images; a latent model's samples are smaller than its
    images, a pixel model's are its images)."""
    check_count(n, flag)
    per_image = BYTES_PER_VALUE * (math.prod(model.sample_shape)
                                   + (copies - 1) * math.prod(model.image_shape))
    have = physical_memory()
    if have is not None and n * per_image > have:
        raise UsageError(f"{flag} {n:,}: {n:,} images of {getattr(model, 'name', 'the model')}"
                         f" ({'x'.join(map(str, model.image_shape))}) need about "
                         f"{n * per_image / 2**30:.0f} GiB of memory, this machine has "
                         f"{have / 2**30:.0f} GiB: at most {have // per_image:,} here")


def physical_memory() -> int | None:
    """Bytes of RAM (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class NoiseBatch:
    noise: torch.Tensor  # (n, C, H, W), the x_T every candidate starts from
    labels: torch.Tensor | None  # (n,) class labels for class-conditional models

    def subset(self, start: int, stop: int) -> "NoiseBatch":
        labels = None if self.labels is None else self.labels[start:stop]
        return NoiseBatch(self.noise[start:stop], labels)


def draw(model: DiffusionModel, n: int, seed: int, purpose: str = SEARCH) -> NoiseBatch:
    if purpose not in (SEARCH, HELDOUT, TEACHER, CONFIRM):
        raise ValueError(f"unknown noise purpose {purpose!r}")
    check_fits(model, n, "the image count")  # callers check with their flag's name first
    check_seed(seed, "the noise seed")
    if purpose in (TEACHER, CONFIRM):
        return _numpy_noise(model, n, seed, TEACHER_KEY if purpose == TEACHER else CONFIRM_KEY)
    generator = torch.Generator().manual_seed(2 * seed + (purpose == HELDOUT))
    noise = torch.randn((n, *model.sample_shape), generator=generator)
    labels = None
    if model.num_classes:
        labels = torch.randint(0, model.num_classes, (n,), generator=generator)
    return NoiseBatch(noise, labels)


def _numpy_noise(model: DiffusionModel, n: int, seed: int, key: int) -> NoiseBatch:
    rng = np.random.default_rng([key, seed])
    noise = torch.from_numpy(rng.standard_normal((n, *model.sample_shape), dtype=np.float32))
    labels = None
    if model.num_classes:
        labels = torch.from_numpy(rng.integers(0, model.num_classes, n))
    return NoiseBatch(noise, labels)
