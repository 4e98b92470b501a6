"""Adapter for diffusers ``UNet2DModel`` checkpoints (the bundled digits model, google/ddpm-*, and
any other unconditional one: ``--model diffusers --checkpoint DIR|HUB_ID``)."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.models.base import DiffusionModel, files_digest
from autodiff_optuna.models.files import RemoteFile, quiet_loading, read_json, resolve


class DiffusersUNetModel(DiffusionModel):
    """A diffusers ``UNet2DModel`` with its scheduler config, in either layout diffusers writes:
    a pipeline's ``save_pretrained`` directory (``unet/`` and ``scheduler/`` inside: the bundled
    digits model) or a flat model repository (``config.json``, ``scheduler_config.json`` and the
    weights side by side: google/ddpm-*)."""

    def __init__(self, name: str, directory: Path, device: str | torch.device = "cpu",
                 clip_denoised: bool | None = False, precision: str | None = "fp32",
                 compile: bool = False, batch_size: int | None = None,
                 batch_size_cpu: int | None = None):
        """``clip_denoised`` None: clip where the scheduler config says ``clip_sample``."""
        from diffusers import UNet2DModel

        directory = Path(directory)
        nested = (directory / "unet" / "config.json").is_file()
        unet_dir = directory / "unet" if nested else directory
        scheduler_file = (directory / "scheduler" / "scheduler_config.json" if nested
                          else directory / "scheduler_config.json")
        if not (unet_dir / "config.json").is_file() or not scheduler_file.is_file():
            raise UsageError(f"model {name!r}: {directory} is not a diffusers model directory: "
                             f"it needs {LAYOUTS}")
        weights, use_safetensors = loaded_weights(unet_dir)
        if not weights:
            raise UsageError(f"model {name!r}: no weights (diffusion_pytorch_model.safetensors "
                             f"or .bin) in {unet_dir}")
        self.name = name
        self._configure_runtime(device, precision, compile, batch_size, batch_size_cpu)
        _check_unet_class(read_json(unet_dir / "config.json"), unet_dir, name)
        self._scheduler_config = scheduler_config(scheduler_file, name)
        try:  # exactly the files hashed into the fingerprint below
            with quiet_loading():
                unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True,
                                                   use_safetensors=use_safetensors,
                                                   low_cpu_mem_usage=low_cpu_mem_usage())
        except (OSError, ValueError, TypeError, RuntimeError, KeyError) as err:
            raise UsageError(f"model {name!r}: cannot load {unet_dir}: {one_line(err)}") from None
        self.unet = unet.to(self.device).eval()
        if clip_denoised is None:  # as diffusers' own pipeline with this scheduler samples
            clip_denoised = bool(self._scheduler_config.get("clip_sample", False))
        self.clip_denoised = clip_denoised
        self.fingerprint = files_digest(weights + [scheduler_file]) + self._runtime_fingerprint()
        cfg = self.unet.config
        if not isinstance(cfg.sample_size, int) or isinstance(cfg.sample_size, bool) \
                or cfg.sample_size < 1:
            raise UsageError(f"model {name!r}: {unet_dir / 'config.json'}: sample_size must be "
                             f"a positive integer (pixels a side), got {cfg.sample_size!r}")
        self.sample_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if cfg.num_class_embeds or cfg.class_embed_type is not None:  # labels it is never given
            raise UsageError(f"model {name!r}: class-conditional diffusers UNets are not "
                             "supported")

    @classmethod
    def from_preset(cls, preset, options, device) -> "DiffusersUNetModel":
        if options.classifier or options.classifier_scale:
            raise UsageError(f"model {preset.name!r} has no classifier guidance")
        if preset.directory is not None:  # bundled
            if options.checkpoint:
                raise UsageError(f"model {preset.name!r} is bundled: --checkpoint does not "
                                 "apply")
            directory = preset.directory
        elif preset.weights is None:  # any diffusers UNet: the one --checkpoint names
            if not options.checkpoint:
                raise UsageError(f"model {preset.name!r} needs --checkpoint DIR|HUB_ID: an "
                                 f"unconditional diffusers UNet2DModel, a folder with {LAYOUTS}, "
                                 "or a hub id in the Hugging Face cache")
            directory = resolve(any_model(options.checkpoint), options.checkpoint)
        else:
            directory = resolve(preset.weights, options.checkpoint, preset=preset.name)
        precision = options.precision or ("fp32" if preset.directory is not None else None)
        return cls(preset.name, directory, device, clip_denoised=preset.clip_denoised,
                   precision=precision, compile=options.compile,
                   batch_size=options.batch_size, batch_size_cpu=preset.batch_size_cpu)

    @property
    def architecture(self) -> str:
        """This checkpoint's UNet2DModel configuration (a user's own need not be a preset's)."""
        config = {key: value for key, value in self.unet.config.items()
                  if not key.startswith("_")}  # where it was loaded from, diffusers' version
        return json.dumps(config, sort_keys=True)

    def predict_noise(self, x, t, labels=None):
        def run(x, labels):
            with self._autocast():
                return self.unet(x, t).sample.float()

        eps = self._padded(run, x, None)
        if self.clip_denoised:
            eps = self._clip_eps(x, t, eps)
        return eps

    SKIPPABLE_PREFIXES = ("down_blocks.", "mid_block.", "up_blocks.")

    def _bypass_for(self, module):
        return bypass_for(module)


WEIGHTS = "diffusion_pytorch_model"
LAYOUTS = ("unet/config.json and scheduler/scheduler_config.json (a pipeline's folder), or "
           "config.json and scheduler_config.json beside the weights (google/ddpm-*)")


def any_model(checkpoint: str) -> RemoteFile:
    """``--checkpoint`` of ``--model diffusers``: a directory, or a hub id (offline cache)."""
    return RemoteFile(Path(checkpoint).name, f"https://huggingface.co/{checkpoint}",
                      flag="--checkpoint", what="diffusers UNet2DModel", hub_id=checkpoint)


def _check_unet_class(config: dict, unet_dir: Path, name: str) -> None:
    """A config of another diffusers class is refused before diffusers reads it as a UNet2DModel
    (it would build a UNet2DModel from whatever keys fit, or fail deep inside)."""
    cls = config.get("_class_name", "UNet2DModel")
    if cls == "UNet2DModel":
        return
    hint = (": Stable Diffusion runs as --model sd14 or sd15 (any v1 checkpoint through "
            "--checkpoint)" if cls == "UNet2DConditionModel" else "")
    raise UsageError(f"model {name!r}: {unet_dir / 'config.json'} is a {cls}, not an "
                     f"unconditional diffusers UNet2DModel{hint}")


def scheduler_config(path: Path, name: str) -> dict[str, Any]:
    """The training schedule from ``scheduler_config.json``; a file that is not JSON, or whose
    values diffusers cannot build a schedule from, is one UsageError line."""
    from diffusers import DDPMScheduler

    config = read_json(path)
    try:
        # builds the betas, so a bad beta_schedule or trained_betas fails here and not mid-search
        full = DDPMScheduler.from_config(config).config
    except Exception as err:  # noqa: BLE001 (diffusers raises whatever its arithmetic raises)
        raise UsageError(f"model {name!r}: {path} is not a diffusers scheduler config: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                         ) from None
    steps = config.get("num_train_timesteps", full.get("num_train_timesteps"))
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise UsageError(f"model {name!r}: {path}: num_train_timesteps must be an integer of "
                         f"at least 2, got {steps!r}")
    if "num_train_timesteps" not in config:  # an old hub config: diffusers' defaults fill in
        config = {k: v for k, v in full.items() if not k.startswith("_")}
    return config


def low_cpu_mem_usage() -> bool:
    """diffusers' loading default where it can have it: without ``accelerate`` diffusers falls
    back to the plain load anyway, after a multi-line warning on stderr that would break the
    CLI's one-line errors."""
    from diffusers.utils import is_accelerate_available

    return is_accelerate_available()


@dataclass(frozen=True)
class WeightNames:
    """How a library names a model folder's weights: ``<stem>.safetensors`` (or its sharded
    index), else ``bin_file``."""

    stem: str
    bin_file: str
    library: str


DIFFUSERS_WEIGHTS = WeightNames(WEIGHTS, f"{WEIGHTS}.bin", "diffusers")
TRANSFORMERS_WEIGHTS = WeightNames("model", "pytorch_model.bin", "transformers")


def loaded_weights(folder: Path, names: WeightNames = DIFFUSERS_WEIGHTS
                   ) -> tuple[list[Path], bool]:
    """The weight files ``from_pretrained`` reads from ``folder`` (no variant), and whether
    they are safetensors: a sharded safetensors index's shards, else the single safetensors
    file, else the single ``.bin`` (the loaders' own order). Other files beside them (fp16 or
    other variants, a stale ``.bin``) are not read, so they are not part of the fingerprint."""
    index = folder / f"{names.stem}.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (KeyError, TypeError, AttributeError):
            raise UsageError(f"{index} is not a {names.library} weight index") from None
        return [folder / shard for shard in shards], True
    for file, safetensors in ((f"{names.stem}.safetensors", True), (names.bin_file, False)):
        if (folder / file).is_file():
            return [folder / file], safetensors
    return [], True


def bypass_for(module):
    """The bypass of a diffusers UNet's skippable layer (ResnetBlock2D, residual Attention);
    None for any other module. Module-level so training (LayerDrop) skips exactly like sampling."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    if isinstance(module, ResnetBlock2D):
        return _resnet_bypass(module)
    if isinstance(module, Attention) and module.residual_connection:
        return _attention_bypass(module)
    return None


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
