from pathlib import Path

import pytest
import torch

from autodiff_optuna.models import load_model


@pytest.fixture(scope="session")
def digits():
    return load_model("digits")


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised UNet2DModel in diffusers' save_pretrained format."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-unet")
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root
