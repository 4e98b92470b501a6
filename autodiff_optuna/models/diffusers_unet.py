"""Adapter for diffusers ``UNet2DModel`` checkpoints (the bundled digits model, google/ddpm-*)."""

import json
from pathlib import Path
from typing import Any

import torch

from autodiff_optuna.models.base import DiffusionModel


class DiffusersUNetModel(DiffusionModel):
    """A ``save_pretrained`` directory with ``unet/`` and ``scheduler/`` inside."""

    def __init__(self, name: str, directory: Path, device: str | torch.device = "cpu"):
        from diffusers import UNet2DModel

        self.name = name
        self.device = torch.device(device)
        self.unet = UNet2DModel.from_pretrained(directory / "unet").to(self.device).eval()
        self._scheduler_config = json.loads(
            (directory / "scheduler" / "scheduler_config.json").read_text())
        cfg = self.unet.config
        self.sample_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return self._scheduler_config

    def predict_noise(self, x, t, labels=None):
        return self.unet(x, t).sample
