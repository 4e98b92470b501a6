"""Adapter for diffusers ``UNet2DModel`` checkpoints (the bundled digits model, google/ddpm-*)."""

import json
from pathlib import Path
from typing import Any

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel, files_digest
from autodiff_optuna.sampling.skipping import SkippableLayer


class DiffusersUNetModel(DiffusionModel):
    """A ``save_pretrained`` directory with ``unet/`` and ``scheduler/`` inside."""

    def __init__(self, name: str, directory: Path, device: str | torch.device = "cpu"):
        from diffusers import UNet2DModel

        scheduler_file = directory / "scheduler" / "scheduler_config.json"
        weights = sorted((directory / "unet").glob("diffusion_pytorch_model*"))
        for needed in [directory / "unet" / "config.json", scheduler_file]:
            if not needed.is_file():
                raise UsageError(f"model {name!r}: {needed} is missing (a diffusers "
                                 "save_pretrained directory holds unet/ and scheduler/)")
        if not weights:
            raise UsageError(f"model {name!r}: no weights (diffusion_pytorch_model.*) in "
                             f"{directory / 'unet'}")
        self.name = name
        self.device = torch.device(device)
        self.unet = UNet2DModel.from_pretrained(directory / "unet").to(self.device).eval()
        self._scheduler_config = json.loads(scheduler_file.read_text())
        self.fingerprint = files_digest(weights + [scheduler_file])
        cfg = self.unet.config
        self.sample_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return self._scheduler_config

    def predict_noise(self, x, t, labels=None):
        return self.unet(x, t).sample

    def _find_skippable_layers(self) -> dict[str, SkippableLayer]:
        from diffusers.models.attention_processor import Attention
        from diffusers.models.resnet import ResnetBlock2D

        layers = {}
        for name, module in self.unet.named_modules():
            if not name.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
                continue
            if isinstance(module, ResnetBlock2D):
                layers[name] = SkippableLayer(name, module, _resnet_bypass(module))
            elif isinstance(module, Attention) and module.residual_connection:
                layers[name] = SkippableLayer(name, module, _attention_bypass(module))
        return layers


def _resnet_bypass(block):
    """A skipped ResnetBlock2D returns its shortcut path: the input, resampled where the block
    resamples, through ``conv_shortcut`` where it has one, with the block's output scale."""

    def forward(input_tensor, temb=None, *args, **kwargs):
        x = input_tensor
        if block.upsample is not None:
            x = block.upsample(x)
        elif block.downsample is not None:
            x = block.downsample(x)
        if block.conv_shortcut is not None:
            x = block.conv_shortcut(x)
        return x / block.output_scale_factor

    return forward


def _attention_bypass(attn):
    """A skipped residual Attention is the identity, with its output rescale."""

    def forward(hidden_states, *args, **kwargs):
        return hidden_states / attn.rescale_output_factor

    return forward
