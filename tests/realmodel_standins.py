"""Tiny randomly initialised models in the real formats, for the real-model tests.

- ADM: guided-diffusion's own ``create_model`` / ``create_classifier`` with small flags, the
  state dicts ``torch.save``d as ``64x64_diffusion.pt`` and ``64x64_classifier.pt`` are.
- diffusers: ``save_pretrained`` of a ``UNet2DModel`` and a ``DDPMScheduler`` into one flat
  directory, the layout of the google/ddpm-* hub repositories.
- Inception: a TorchScript module with clean-fid's interface (``layers`` on normalised 299x299
  input; ``forward(img, return_features=True)`` resizing inside). It stands in for
  ``inception-2015-12-05.pt`` only where those weights are absent (no network here).
"""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autodiff_optuna.models.registry import PRESETS

TINY_ADM_FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                      num_head_channels=16, attention_resolutions="8", class_cond=True,
                      learn_sigma=True, resblock_updown=True, use_new_attention_order=True,
                      use_scale_shift_norm=True, dropout=0.1, use_fp16=True)
# create_classifier fixes its channel multipliers by image_size (64 here); the adaptive pool lets
# it read the tiny model's 16x16 images
TINY_CLASSIFIER_FLAGS = dict(image_size=64, classifier_attention_resolutions="8",
                             classifier_depth=1, classifier_width=32, classifier_pool="adaptive",
                             classifier_resblock_updown=True,
                             classifier_use_scale_shift_norm=True, classifier_use_fp16=True)


def _perturb(module: nn.Module, seed: int) -> None:
    """ADM zero-initialises its output convolutions: a fresh network predicts exactly 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def save_tiny_adm(directory, seed: int = 0):
    """(checkpoint, classifier) files, like 64x64_diffusion.pt and 64x64_classifier.pt."""
    from guided_diffusion import script_util

    torch.manual_seed(seed)
    unet = script_util.create_model(**TINY_ADM_FLAGS)
    _perturb(unet, seed)
    classifier = script_util.create_classifier(**TINY_CLASSIFIER_FLAGS)
    _perturb(classifier, seed + 1)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(unet.state_dict(), directory / "tiny_diffusion.pt")
    torch.save(classifier.state_dict(), directory / "tiny_classifier.pt")
    return directory / "tiny_diffusion.pt", directory / "tiny_classifier.pt"


def tiny_adm_preset(name: str = "adm-tiny"):
    """The real adm64 preset (files, URLs, guidance, FID mode, clipping) with small flags."""
    return dataclasses.replace(PRESETS["adm64"], name=name, flags=TINY_ADM_FLAGS,
                               classifier_flags=TINY_CLASSIFIER_FLAGS)


def save_tiny_ddpm(directory, seed: int = 0, old_scheduler_config: bool = False):
    """A flat diffusers directory like google/ddpm-cifar10-32's (3 x 16 x 16 here)."""
    import json

    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(directory)
    DDPMScheduler(num_train_timesteps=1000, clip_sample=True).save_pretrained(directory)
    if old_scheduler_config:  # google/ddpm-cifar10-32's first config: "timesteps", no T key
        (directory / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "GaussianDDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
             "beta_start": 0.0001, "timesteps": 1000, "variance_type": "fixed_large"}))
    return directory


def tiny_ddpm_preset(name: str = "ddpm-tiny"):
    return dataclasses.replace(PRESETS["ddpm-cifar10"], name=name)


class _Layers(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, kernel_size=13, stride=13)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.tanh(self.conv(x)))


class StandInInception(nn.Module):
    """clean-fid's TorchScript Inception interface, random weights."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = _Layers(dim)

    def forward(self, img, return_features: bool = False):
        x = F.interpolate(img.to(torch.float32), size=(299, 299), mode="bilinear",
                          align_corners=False)
        return self.layers((x - 128) / 128).flatten(1)


def save_standin_inception(path, dim: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(StandInInception(dim).eval()), str(path))
    return path


def save_stats(path, feats: np.ndarray):
    np.savez(path, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    return path


def isolate(monkeypatch, root) -> None:
    """Nothing found by accident in a real models directory or cache of this machine: the
    models directories, clean-fid's folders and the Hugging Face cache are under ``root``."""
    import huggingface_hub.constants

    monkeypatch.setenv("AUTODIFF_MODELS_DIR", str(root / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    monkeypatch.setattr("autodiff_optuna.metrics.inception.CLEANFID_INCEPTION_DIR", root / "tmp")
    monkeypatch.setattr("autodiff_optuna.metrics.inception.cleanfid_stats_dir",
                        lambda: root / "cleanfid-stats")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hf"))
