"""The one interface every model family sits behind.

A search only needs three things from a network: its noise prediction at an integer training time
step, the training noise schedule (to build solvers over any subset of its steps), and the shape
of what it generates. Adapters for each family (diffusers UNets, ADM) implement exactly that.
"""

import abc
import hashlib
from pathlib import Path
from typing import Any

import torch


def files_digest(paths) -> str:
    """A short SHA-256 over files' contents: which weights a result came from."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


class DiffusionModel(abc.ABC):
    """An epsilon-predicting diffusion model with a discrete training schedule."""

    name: str
    sample_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int | None = None  # class-conditional models draw labels per sample
    device: torch.device = torch.device("cpu")
    fingerprint: str = ""  # digest of the weights: a study refuses to mix results across them

    @property
    @abc.abstractmethod
    def scheduler_config(self) -> dict[str, Any]:
        """The training noise schedule as a diffusers scheduler config (betas, T, ...)."""

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config["num_train_timesteps"])

    def skippable_layers(self) -> dict:
        """Name -> ``SkippableLayer`` for every layer a candidate may skip (built once)."""
        if getattr(self, "_skippable", None) is None:
            self._skippable = self._find_skippable_layers()
        return self._skippable

    @abc.abstractmethod
    def _find_skippable_layers(self) -> dict:
        """The family's ResBlocks and attention layers, each with its bypass."""

    @abc.abstractmethod
    def predict_noise(self, x: torch.Tensor, t: torch.Tensor,
                      labels: torch.Tensor | None = None) -> torch.Tensor:
        """Epsilon for a batch ``x`` at training time step ``t`` (a 0-d integer tensor)."""
