"""Common random numbers: every candidate of a study is scored on the same noise and labels.

The search and held-out evaluation draw from disjoint seed streams (even and odd generator seeds),
so ``evaluate`` checks a schedule on noise that no study, whatever its seed, ever searched on.
"""

from dataclasses import dataclass

import torch

from autodiff_optuna.models.base import DiffusionModel

SEARCH, HELDOUT = "search", "heldout"


@dataclass(frozen=True)
class NoiseBatch:
    noise: torch.Tensor  # (n, C, H, W), the x_T every candidate starts from
    labels: torch.Tensor | None  # (n,) class labels for class-conditional models

    def subset(self, start: int, stop: int) -> "NoiseBatch":
        labels = None if self.labels is None else self.labels[start:stop]
        return NoiseBatch(self.noise[start:stop], labels)


def draw(model: DiffusionModel, n: int, seed: int, purpose: str = SEARCH) -> NoiseBatch:
    if purpose not in (SEARCH, HELDOUT):
        raise ValueError(f"unknown noise purpose {purpose!r}")
    generator = torch.Generator().manual_seed(2 * seed + (purpose == HELDOUT))
    noise = torch.randn((n, *model.sample_shape), generator=generator)
    labels = None
    if model.num_classes:
        labels = torch.randint(0, model.num_classes, (n,), generator=generator)
    return NoiseBatch(noise, labels)
