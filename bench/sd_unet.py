"""Stable Diffusion 1.5's UNet with random weights, behind the model interface, for bench/gpu.py.

The network is diffusers' ``UNet2DConditionModel`` built from the values of SD 1.5's
``unet/config.json`` (written here: nothing is downloaded), conditioned on one fixed random text
embedding (77 tokens, as CLIP's context). One network call is one UNet evaluation of each image:
no classifier-free guidance (a guided step costs two such calls, as the search's adapter runs
them in one doubled batch) and no text encoder or VAE, so the row measures what the search's
masks act on. Its layers are skipped by the Stable Diffusion adapter's own bypasses
(``sd_bypass_for``), so a mask costs here what it costs in a search.
"""

import torch

from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.models.registry import SD_V1_UNET
from autodiff_optuna.models.stable_diffusion import StableDiffusionModel, sd_bypass_for

# SD 1.5's UNet (models/registry.py): 859.5 M parameters, 38 skippable layers, 803 GFLOP
# per 512x512 image
SD15_UNET = SD_V1_UNET
# the same block types, tiny: the CPU smoke run
TINY_SD_UNET = {**SD15_UNET, "sample_size": 8, "block_out_channels": (32, 32, 64, 64),
                "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 32}
# SD v1's training schedule (its scheduler_config.json)
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear"}
TOKENS = 77


class RandomSDUNet(DiffusionModel):
    SKIPPABLE_PREFIXES = StableDiffusionModel.SKIPPABLE_PREFIXES

    def __init__(self, config: dict, device="cpu", precision: str | None = None,
                 compile: bool = False, batch_size: int | None = None, seed: int = 0):
        from diffusers import UNet2DConditionModel

        self.name = "sd15-unet-random"
        self._configure_runtime(device, precision, compile, batch_size)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.unet = UNet2DConditionModel(**config).to(self.device).eval().requires_grad_(False)
        self.text = torch.randn((1, TOKENS, config["cross_attention_dim"]),
                                generator=generator).to(self.device)
        self.sample_shape = (config["in_channels"], config["sample_size"],
                             config["sample_size"])

    @property
    def scheduler_config(self) -> dict:
        return SD_SCHEDULE

    @property
    def network(self) -> torch.nn.Module:
        return self.unet

    def _bypass_for(self, module):
        return sd_bypass_for(module)

    def predict_noise(self, x, t, labels=None):
        def run(x, labels):
            with self._autocast():
                return self.unet(x, t, encoder_hidden_states=self.text.expand(len(x), -1, -1)
                                 ).sample.float()

        return self._padded(run, x, None)
