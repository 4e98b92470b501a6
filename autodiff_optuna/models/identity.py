"""A model's identity, as a study records it, an exported schedule carries it and
``pipelines.apply`` checks it against a pipeline: which network (its class and config), which
training noise schedule (its betas), whether it is text-to-image, and which weights.

A schedule on another network or another training schedule samples something it was never
searched for; other weights of the same network (a fine-tune) may still sample well. Each part is
a short digest, computed the same way from a loaded network (the study's model, a pipeline's
UNet) and from a bundled model's files, so any two can be compared.
"""

import hashlib
import inspect
import json
from pathlib import Path

import torch

from autodiff_optuna.models.files import read_json
from autodiff_optuna.storage.record import IDENTITY_ATTR as IDENTITY_ATTR  # the study's record

# values digested per weight tensor, spread over it: a fine-tune changes nearly every value, so
# a few per tensor tell it apart without reading gigabytes of weights
WEIGHT_SAMPLES = 16
# significant digits of the betas digested: a last-bit difference of another torch build or
# diffusers version is the same schedule
BETA_DIGITS = 7
# the parts whose mismatch means another model (a mismatch of the weights alone: a fine-tune)
NETWORK_PARTS = ("text_to_image", "unet", "unet_config", "training_schedule")


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_digest(cls: type, config: dict) -> str:
    """A diffusers network's config as its class builds it: every constructor argument, the
    default where ``config`` omits it, so a config file and the loaded network's config (which
    diffusers fills in) give the same digest; private keys (``_name_or_path``, the diffusers
    version) are not part of it."""
    params = inspect.signature(cls.__init__).parameters
    full = {name: p.default for name, p in params.items()
            if name != "self" and p.default is not inspect.Parameter.empty}
    full.update({key: value for key, value in config.items() if key in params})
    return _digest({"class": cls.__name__, **full})


def network_digest(unet: torch.nn.Module) -> str:
    """``config_digest`` of a diffusers network; another network (ADM's) is named by its class
    and the names and shapes of its parameters, its architecture."""
    config = getattr(unet, "config", None)
    if isinstance(config, dict):
        return config_digest(type(unet), dict(config))
    return _digest({"class": type(unet).__name__,
                    "shapes": {name: list(t.shape) for name, t in unet.state_dict().items()}})


def weights_digest(state_dict: dict) -> str:
    """A digest of ``WEIGHT_SAMPLES`` values of each floating-point tensor, as float16: the
    same for a network in fp32 and in fp16 (a half-precision copy rounds as this does)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        flat = state_dict[name].detach().reshape(-1)
        if not flat.is_floating_point() or flat.numel() == 0:
            continue
        k = min(WEIGHT_SAMPLES, flat.numel())
        picks = torch.arange(k) * (flat.numel() - 1) // max(k - 1, 1)
        digest.update(name.encode())
        digest.update(flat[picks.to(flat.device)].to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def schedule_digest(scheduler_config: dict) -> str:
    """The training noise schedule by its betas (as diffusers builds them from any of its
    schedulers' configs): two configs that define the same betas are the same schedule."""
    from diffusers import DDPMScheduler

    betas = DDPMScheduler.from_config(dict(scheduler_config)).betas.tolist()
    return _digest([float(f"{beta:.{BETA_DIGITS - 1}e}") for beta in betas])


def is_text_to_image(unet_config) -> bool:
    """Whether a network is conditioned on text (cross-attention, as Stable Diffusion's)."""
    return bool(isinstance(unet_config, dict) and unet_config.get("cross_attention_dim"))


def identity(unet: torch.nn.Module, scheduler_config: dict) -> dict:
    """The identity of a loaded network with its training schedule."""
    return {"unet": type(unet).__name__, "unet_config": network_digest(unet),
            "unet_weights": weights_digest(unet.state_dict()),
            "training_schedule": schedule_digest(scheduler_config),
            "text_to_image": is_text_to_image(getattr(unet, "config", None))}


def model_identity(model) -> dict:
    """The identity of a ``DiffusionModel`` (what a study records)."""
    return identity(model.unet, model.scheduler_config)


def bundled_identity(directory: Path) -> dict:
    """The identity of a bundled diffusers model (``unet/`` and ``scheduler/`` in
    ``directory``) from its files, without building its network."""
    import diffusers
    from safetensors.torch import load_file

    config = read_json(directory / "unet" / "config.json")
    cls = getattr(diffusers, config["_class_name"])
    return {"unet": cls.__name__, "unet_config": config_digest(cls, config),
            "unet_weights": weights_digest(
                load_file(directory / "unet" / "diffusion_pytorch_model.safetensors")),
            "training_schedule": schedule_digest(
                read_json(directory / "scheduler" / "scheduler_config.json")),
            "text_to_image": is_text_to_image(config)}
