"""Adapter for Stable Diffusion v1 (text-to-image in a VAE's latent space), from diffusers' and
transformers' own components: ``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``,
``CLIPTokenizer``, each loaded from its folder of a diffusers repository (the hub layout of
CompVis/stable-diffusion-v1-4: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``). No pipeline is used: the search samples with its own solvers.

- What is sampled is a latent (4 x H/8 x W/8, ``sample_shape``); ``decode`` turns latents into
  images in [-1, 1] with the VAE, a few at a time (``decode_batch_size``) so memory stays flat
  whatever the image count.
- Prompts are classes: ``num_classes`` is the number of prompts, so ``sampling.noise.draw``
  draws each sample's prompt index from the study seed next to its noise, and every candidate
  sees the same (prompt, noise) pairs. A prompt's text embedding is computed the first time a
  sample needs it and kept for the process (the empty prompt's and the first prompt's at load,
  so that FLOP counting and batch sizing see the UNet alone).
- Classifier-free guidance inside ``predict_noise``: one UNet call on the doubled batch
  (unconditional on the empty prompt, then conditional), ``eps_u + s (eps_c - eps_u)``; at
  ``guidance_scale`` 1 only the conditional half runs. FLOPs per image therefore count both
  halves; the text encoder and the VAE decoder are reported beside them
  (``unskippable_work``).
- Skippable layers: every ResnetBlock2D (its shortcut, ``diffusers_unet.bypass_for``) and every
  Transformer2DModel (the identity: its output is its input plus a residual branch) under the
  down, mid and up blocks, named by module path.
"""

import math
from pathlib import Path

import torch

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.models.base import DiffusionModel, files_digest
from autodiff_optuna.models.diffusers_unet import (
    DIFFUSERS_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    bypass_for,
    loaded_weights,
    low_cpu_mem_usage,
    scheduler_config,
)
from autodiff_optuna.models.files import RemoteFile, quiet_loading, read_json, resolve
from autodiff_optuna.models.prompts import prompts_digest, read_prompts, resolve_prompts

HF_URL = "https://huggingface.co"
# SD v1's reference repository: its layout is the one read here, and a missing file is named
# with its URL there when no preset or hub id says where the files come from
REFERENCE_HUB_ID = "CompVis/stable-diffusion-v1-4"
# the files of such a repository the adapter reads (a diffusers pipeline directory)
REPO_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/config.json", "text_encoder/model.safetensors",
              "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
              "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json")
DEFAULT_GUIDANCE = 7.5  # the diffusers pipeline's and the CompVis scripts' default


def hub_weights(hub_id: str) -> RemoteFile:
    """A Stable Diffusion hub repository as a preset's ``weights`` (``models/registry.py``)."""
    return RemoteFile(hub_id.split("/")[1], f"{HF_URL}/{hub_id}", flag="--checkpoint",
                      what="Stable Diffusion in diffusers' format", hub_id=hub_id,
                      files=REPO_FILES)


# ---- the adapter -----------------------------------------------------------------------------

# the tokenizer's files that are part of the fingerprint, where present: transformers 4 writes
# vocab.json and merges.txt, transformers 5 tokenizer.json; which ones suffice is for
# transformers to decide as it loads them
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenizer.json")
# prompts per text-encoder call, always this many (padded with empty prompts): kernels are
# chosen by shape, so a prompt's embedding then never depends on which prompts were encoded
# beside it, and a study and a later `evaluate` get the same bits
ENCODE_BATCH = 32


class StableDiffusionModel(DiffusionModel):
    SKIPPABLE_PREFIXES = ("down_blocks.", "mid_block.", "up_blocks.")

    def __init__(self, name: str, directory: Path, prompts: list[str],
                 device: str | torch.device = "cpu", guidance_scale: float = DEFAULT_GUIDANCE,
                 precision: str | None = None, compile: bool = False,
                 batch_size: int | None = None, batch_size_cpu: int | None = None,
                 decode_batch_size: int = 4, hub_id: str | None = None):
        """``directory``: a diffusers Stable Diffusion directory; ``prompts``: the prompt list
        (``models.prompts.read_prompts``); ``hub_id`` names where a missing file is published
        (None: a folder of one's own, published nowhere)."""
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)
                and guidance_scale >= 0):
            raise UsageError(f"--guidance-scale must be a finite number >= 0 (1: no guidance), "
                             f"got {guidance_scale}")
        if not prompts:
            raise UsageError(f"model {name!r} needs at least one prompt")
        if decode_batch_size < 1:
            raise UsageError(f"the VAE decode batch must be at least 1, got {decode_batch_size}")
        self.name = name
        self._configure_runtime(device, precision, compile, batch_size, batch_size_cpu)
        files = component_files(Path(directory), name, hub_id)
        self._scheduler_config = scheduler_config(files["scheduler"], name)
        self.unet, self.vae = _load_diffusers(files, name)
        self.tokenizer, self.text_encoder = _load_transformers(files, name)
        for module in (self.unet, self.vae, self.text_encoder):
            # frozen: embeddings made under inference_mode may then meet them in any grad mode
            module.to(self.device).eval().requires_grad_(False)
        self.prompts = list(prompts)
        self.num_classes = len(self.prompts)
        self.guidance_scale = float(guidance_scale)
        self.decode_batch_size = int(decode_batch_size)
        cfg = self.unet.config
        self.sample_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._image_shape = (self.vae.config.out_channels, cfg.sample_size * factor,
                             cfg.sample_size * factor)
        self.fingerprint = (files_digest(files["digested"])
                            + f"+prompts@{prompts_digest(self.prompts)}*{self.guidance_scale:g}"
                            + self._runtime_fingerprint())
        self._embeddings: dict[int, torch.Tensor] = {}
        self._uncond = self._encode([""])[0]
        self.prompt_embeddings(torch.zeros(1, dtype=torch.long))

    @classmethod
    def from_preset(cls, preset, options, device) -> "StableDiffusionModel":
        """The preset's model with the run's options (``--checkpoint``, ``--prompts``,
        ``--guidance-scale``, precision and batching)."""
        if options.classifier or options.classifier_scale:
            raise UsageError(f"model {preset.name!r} has no classifier guidance: "
                             "--guidance-scale sets its classifier-free guidance")
        directory = resolve(preset.weights, options.checkpoint, preset=preset.name)
        # where a missing file of the directory is published: the hub id --checkpoint named, or
        # the preset's for its own folder; a folder --checkpoint names is the user's own
        if _is_hub_id(options.checkpoint):
            hub_id = options.checkpoint
        else:
            hub_id = None if options.checkpoint else preset.weights.hub_id
        component_files(Path(directory), preset.name, hub_id)  # what the weights lack, first
        prompts = read_prompts(resolve_prompts(options.prompts, preset.prompts))
        scale = options.guidance_scale if options.guidance_scale is not None \
            else preset.guidance_scale
        return cls(preset.name, directory, prompts, device, guidance_scale=scale,
                   precision=options.precision, compile=options.compile,
                   batch_size=options.batch_size, batch_size_cpu=preset.batch_size_cpu,
                   hub_id=hub_id)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    # ---- text ----

    @torch.inference_mode()
    def _encode(self, texts: list[str], fixed_shape: bool = True) -> torch.Tensor:
        """CLIP's last hidden states (n, tokens, dim) for ``texts`` (at most ``ENCODE_BATCH``),
        padded to the full context as SD was trained (no attention mask), in fp32 whatever the
        UNet's precision; ``fixed_shape``: in a batch of ``ENCODE_BATCH``."""
        n = len(texts)
        if fixed_shape:
            texts = list(texts) + [""] * (ENCODE_BATCH - n)
        length = min(self.tokenizer.model_max_length,
                     self.text_encoder.config.max_position_embeddings)
        ids = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids).last_hidden_state.float()[:n]

    def prompt_embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """The text embeddings of prompts ``labels``, each encoded once per process."""
        indices = [int(i) for i in labels.tolist()]
        missing = sorted(set(indices) - self._embeddings.keys())
        for start in range(0, len(missing), ENCODE_BATCH):
            chunk = missing[start:start + ENCODE_BATCH]
            for i, embedding in zip(chunk, self._encode([self.prompts[i] for i in chunk])):
                self._embeddings[i] = embedding
        return torch.stack([self._embeddings[i] for i in indices])

    # ---- the interface ----

    def predict_noise(self, x, t, labels=None):
        if labels is None:
            raise ValueError(f"{self.name} is text-conditional: labels (prompt indices) are "
                             "required")

        def run(x, labels):
            cond = self.prompt_embeddings(labels)
            if self.guidance_scale == 1:  # no guidance: the conditional half alone
                with self._autocast():
                    return self.unet(x, t, encoder_hidden_states=cond).sample.float()
            uncond = self._uncond.expand(len(x), -1, -1)
            with self._autocast():
                eps = self.unet(torch.cat([x, x]), t,
                                encoder_hidden_states=torch.cat([uncond, cond])).sample.float()
            eps_uncond, eps_cond = eps.chunk(2)
            return eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)

        return self._padded(run, x, labels)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (n, 3, H, W), fp32, on ``latents``' device: the VAE decoder on
        ``latents / scaling_factor``, ``decode_batch_size`` latents at a time."""
        config = self.vae.config
        images = []
        for start in range(0, len(latents), self.decode_batch_size):
            z = latents[start:start + self.decode_batch_size].to(self.device)
            z = z / config.scaling_factor + (getattr(config, "shift_factor", None) or 0)
            with self._autocast():
                images.append(self.vae.decode(z).sample.float().to(latents.device))
        return torch.cat(images)

    def _bypass_for(self, module):
        return sd_bypass_for(module)

    def unskippable_work(self) -> dict:
        """The work per image outside the searched network, as zero-argument calls for a FLOP
        counter (``metrics.flops`` counts them; models sit below metrics): one prompt through
        the text encoder (each prompt is encoded once) and one latent through the VAE
        decoder. Neither is skippable; both are reported beside the UNet's GFLOPs."""
        latent = torch.zeros((1, *self.sample_shape), device=self.device)
        return {"text_encoder": lambda: self._encode([self.prompts[0]], fixed_shape=False),
                "vae_decode": lambda: self.decode(latent)}


def sd_bypass_for(module):
    """The bypass of a ``UNet2DConditionModel``'s skippable layer (ResnetBlock2D, residual
    Attention: ``diffusers_unet.bypass_for``; Transformer2DModel: the identity); None for any
    other module. Module-level, so a diffusers pipeline (``pipelines.apply``) skips exactly as
    the search sampled."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    if isinstance(module, Transformer2DModel):
        # only continuous input (SD's) is residual: patched or vectorized input is not
        return _transformer_bypass() if module.is_input_continuous else None
    return bypass_for(module)


def _transformer_bypass():
    """A skipped Transformer2DModel (continuous input) is the identity, returned as the block
    returns its output: a tuple with ``return_dict=False`` (how the UNet's blocks call it),
    else the output class its own module builds (in diffusers 0.42 the deprecated subclass
    that ``transformer_2d`` defines over ``modeling_outputs.Transformer2DModelOutput``)."""
    from diffusers.models.transformers import transformer_2d

    def forward(hidden_states, *args, return_dict: bool = True, **kwargs):
        if return_dict:
            return transformer_2d.Transformer2DModelOutput(sample=hidden_states)
        return (hidden_states,)

    return forward


# ---- loading ---------------------------------------------------------------------------------

LAYOUT = ("a diffusers Stable Diffusion folder, as StableDiffusionPipeline.save_pretrained "
          "writes it: unet/, vae/, text_encoder/, tokenizer/, scheduler/")


def component_files(directory: Path, name: str, hub_id: str | None = None) -> dict:
    """The files each component loads from ``directory``; a missing one is one line naming it
    and, for a published model (``hub_id``), its URL and where it goes. ``digested``: those
    that change the samples (weights, tokenizer files, the training schedule), for the
    fingerprint."""
    if not directory.is_dir():
        raise UsageError(f"model {name!r}: {directory} is not a directory ({LAYOUT})")

    def need(relative: str, present: bool) -> None:
        if present:
            return
        if hub_id is None:  # the user's own folder: no public copy to point at
            raise UsageError(f"model {name!r}: {directory} lacks {relative}: it is not {LAYOUT}")
        raise UsageError(f"model {name!r}: {directory} lacks {relative}: download "
                         f"{HF_URL}/{hub_id}/resolve/main/{relative} into "
                         f"{directory / Path(relative).parent} (or pass --checkpoint "
                         "DIR|HUB_ID of a complete copy)")

    files: dict = {"digested": []}
    for part, names in (("unet", DIFFUSERS_WEIGHTS), ("vae", DIFFUSERS_WEIGHTS),
                        ("text_encoder", TRANSFORMERS_WEIGHTS)):
        folder = directory / part
        need(f"{part}/config.json", (folder / "config.json").is_file())
        weights, safetensors = loaded_weights(folder, names)
        need(f"{part}/{names.stem}.safetensors", bool(weights))
        read_json(folder / "config.json")  # one line for a config the loader would choke on
        files[part] = (folder, safetensors)
        files["digested"] += weights
    tokenizer = directory / "tokenizer"
    need("tokenizer/", tokenizer.is_dir())
    files["tokenizer"] = tokenizer
    files["digested"] += [tokenizer / f for f in TOKENIZER_FILES if (tokenizer / f).is_file()]
    need("scheduler/scheduler_config.json",
         (directory / "scheduler" / "scheduler_config.json").is_file())
    files["scheduler"] = directory / "scheduler" / "scheduler_config.json"
    files["digested"].append(files["scheduler"])
    return files


def _is_hub_id(text: str | None) -> bool:
    """``--checkpoint`` names a hub repository (owner/name), not a local directory."""
    if not text or Path(text).expanduser().exists():
        return False
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _load_diffusers(files: dict, name: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    loaded = []
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        folder, safetensors = files[part]
        try:
            with quiet_loading():
                loaded.append(cls.from_pretrained(folder, local_files_only=True,
                                                  use_safetensors=safetensors,
                                                  low_cpu_mem_usage=low_cpu_mem_usage()))
        except (OSError, ValueError, TypeError, RuntimeError) as err:
            raise UsageError(f"model {name!r}: cannot load {folder}: "
                             f"{one_line(err)}") from None
    unet, vae = loaded
    if not getattr(unet.config, "cross_attention_dim", None):
        raise UsageError(f"model {name!r}: {files['unet'][0]} is not a text-conditional UNet")
    if unet.config.in_channels != vae.config.latent_channels:
        raise UsageError(f"model {name!r}: the UNet samples {unet.config.in_channels} channels, "
                         f"the VAE decodes {vae.config.latent_channels}")
    return unet, vae


def _load_transformers(files: dict, name: str):
    try:
        import transformers
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise UsageError(f"Stable Diffusion needs the transformers package ({err.name} is "
                         "missing): pip install 'transformers>=4.44,<6'") from None
    folder, safetensors = files["text_encoder"]
    logging = transformers.utils.logging
    verbosity, progress = logging.get_verbosity(), logging.is_progress_bar_enabled()
    # quiet: a successful load prints nothing (the CLI's errors are one line on stderr)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        # whatever files transformers loads a CLIPTokenizer from (as diffusers' pipeline does)
        tokenizer = _loaded(lambda: CLIPTokenizer.from_pretrained(files["tokenizer"],
                                                                  local_files_only=True),
                            files["tokenizer"], name)
        # a checkpoint stored in fp16 is computed in fp32 here (precision is autocast's)
        with quiet_loading():
            encoder = _loaded(lambda: CLIPTextModel.from_pretrained(
                folder, local_files_only=True, use_safetensors=safetensors).float(),
                folder, name)
    finally:
        logging.set_verbosity(verbosity)
        if progress:
            logging.enable_progress_bar()
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        # transformers 5 builds an empty tokenizer from a folder with no vocabulary
        raise UsageError(f"model {name!r}: cannot load the tokenizer in {files['tokenizer']}: "
                         "it has no vocabulary (tokenizer.json, or vocab.json and merges.txt)")
    if len(tokenizer) > encoder.config.vocab_size:
        raise UsageError(f"model {name!r}: the tokenizer's {len(tokenizer)} tokens do not fit "
                         f"the text encoder's {encoder.config.vocab_size}")
    return tokenizer, encoder


def _loaded(load, folder: Path, name: str):
    """``load()``, its failure one line naming the folder."""
    try:
        return load()
    except Exception as err:  # noqa: BLE001 (tokenizers and safetensors raise their own types)
        raise UsageError(f"model {name!r}: cannot load {folder}: {one_line(err)}") from None


