"""The one registry of model presets: which network, which adapter, which files, which FID.

Every fact about a preset lives here once: its family (which adapter loads it: ``ADAPTERS``), the
files it needs with their public URLs, its architecture flags, its default FID reference (a
statistics file or a folder of real images), a text-to-image model's default prompts and
guidance. Where the files are looked for is ``models/files.py``; ``--checkpoint`` and friends
override it per run (``ModelOptions``).
"""

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cleanfid.downloads_helper import inception_url

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.adm import AdmModel
from autodiff_optuna.models.base import PRECISIONS, DiffusionModel, check_batch_size
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel
from autodiff_optuna.models.files import RemoteFile
from autodiff_optuna.models.prompts import COCO_CAPTIONS
from autodiff_optuna.models.stable_diffusion import (
    DEFAULT_GUIDANCE,
    REFERENCE_HUB_ID,
    StableDiffusionModel,
    hub_weights,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
DIGITS_DIR = WEIGHTS_DIR / "digits"  # also the digits FID network, for every digits preset

ADM_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
CLEANFID_STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats"
# MS-COCO 2014 validation: the Stable Diffusion presets' prompts (its captions, models/prompts.py)
# and FID reference (its images, whose clean-fid statistics are made once and cached)
COCO_IMAGES = RemoteFile("val2014", "http://images.cocodataset.org/zips/val2014.zip",
                         flag="--ref-images",
                         what="MS-COCO 2014 validation images, the zip's val2014/ folder")

# clean-fid's Inception-V3 (the TF FID network as TorchScript), from where clean-fid fetches it
INCEPTION = RemoteFile(inception_url.rsplit("/", 1)[1], inception_url, flag="--inception",
                       what="Inception-V3 FID network")


def cleanfid_stats(dataset: str, res: int, split: str, mode: str = "clean") -> RemoteFile:
    """One of clean-fid's precomputed statistics, named as ``get_reference_statistics`` names
    it (clean-fid keeps the ones it downloads in its package's ``stats/`` folder)."""
    name = f"{dataset}_{mode}_{split}_{res}.npz".lower()
    return RemoteFile(name, f"{CLEANFID_STATS_URL}/{name}", flag="--ref-stats",
                      what="FID reference statistics")


@dataclass(frozen=True, eq=False)
class ModelPreset:
    name: str
    family: str  # which adapter loads it (ADAPTERS): "diffusers-unet" | "adm" | "stable-diffusion"
    fid: str  # which scorer: "digits" (bundled) | "inception" (clean-fid's Inception-V3)
    directory: Path | None = None  # bundled weights (digits)
    # diffusers: the hub checkpoint's UNet2DModel config, what --estimate prices with no weights
    unet_config: dict = field(default_factory=dict)
    # ADM: the .pt state dict; diffusers: the hub repo; None (and no directory): --checkpoint
    weights: RemoteFile | None = None
    flags: dict = field(default_factory=dict)  # ADM: guided-diffusion's create_model flags
    diffusion: dict = field(default_factory=dict)  # ADM: diffusion_steps, noise_schedule
    classifier: RemoteFile | None = None  # ADM-G: the noisy-image classifier
    classifier_flags: dict = field(default_factory=dict)  # create_classifier flags
    classifier_scale: float = 0.0  # default guidance scale (0: unguided)
    ref_stats: RemoteFile | None = None  # default FID reference statistics
    ref_images: RemoteFile | None = None  # else: a default folder of real images (clean-fid's)
    fid_mode: str = "clean"  # clean-fid mode the features are computed in
    # clip the x0 prediction to [-1, 1] at every step (None: where the model's scheduler config
    # says ``clip_sample``, as a diffusers pipeline with that scheduler would)
    clip_denoised: bool | None = False
    batch_size_cpu: int | None = None  # images per network call on the CPU (None: all)
    prompts: RemoteFile | None = None  # text-to-image: the default --prompts file
    guidance_scale: float | None = None  # text-to-image: the default classifier-free guidance


# openai/guided-diffusion's README, "ImageNet 64x64" (MODEL_FLAGS / CLASSIFIER_FLAGS)
ADM64_FLAGS = dict(image_size=64, num_channels=192, num_res_blocks=3, num_head_channels=64,
                   attention_resolutions="32,16,8", class_cond=True, learn_sigma=True,
                   resblock_updown=True, use_new_attention_order=True,
                   use_scale_shift_norm=True, dropout=0.1, use_fp16=True)
ADM64_CLASSIFIER_FLAGS = dict(image_size=64, classifier_attention_resolutions="32,16,8",
                              classifier_depth=4, classifier_width=128,
                              classifier_pool="attention", classifier_resblock_updown=True,
                              classifier_use_scale_shift_norm=True, classifier_use_fp16=True)


# Stable Diffusion v1's networks, the values of its unet/ and vae/config.json (v1.4 and v1.5
# share them): what a study's cost is counted on before any weights are here
SD_V1_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1)
SD_V1_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
    sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4)
# google/ddpm-*'s UNet2DModel, the values of their config.json (Ho et al. 2020's networks:
# 128 channels, two resnets a level, attention at 16x16)
_DDPM_UNET = dict(
    in_channels=3, out_channels=3, layers_per_block=2, attention_head_dim=None,
    norm_num_groups=32, norm_eps=1e-6, act_fn="silu", center_input_sample=False,
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1,
    time_embedding_type="positional")
DDPM_CIFAR10_UNET = dict(
    _DDPM_UNET, sample_size=32, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
DDPM_LSUN256_UNET = dict(  # church and bedroom alike
    _DDPM_UNET, sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)


def _ddpm(name: str, hub_id: str, stats: RemoteFile | None, unet_config: dict) -> ModelPreset:
    return ModelPreset(
        name, "diffusers-unet", "inception",
        weights=RemoteFile(hub_id.split("/")[1], f"https://huggingface.co/{hub_id}",
                           flag="--checkpoint", what="diffusers model", hub_id=hub_id,
                           files=("config.json", "diffusion_pytorch_model.safetensors",
                                  "scheduler_config.json")),
        ref_stats=stats, clip_denoised=True, batch_size_cpu=64, unet_config=unet_config)


def _stable_diffusion(name: str, hub_id: str) -> ModelPreset:
    """Stable Diffusion v1 as AutoDiffusion evaluated it: prompts from MS-COCO 2014 validation
    captions, FID against its images (clean-fid, clean mode), guidance 7.5."""
    return ModelPreset(name, "stable-diffusion", "inception", weights=hub_weights(hub_id),
                       ref_images=COCO_IMAGES, prompts=COCO_CAPTIONS,
                       guidance_scale=DEFAULT_GUIDANCE, batch_size_cpu=4)


PRESETS = {
    preset.name: preset
    for preset in [
        # the bundled 8x8 DDPM trained on scikit-learn's handwritten digits
        ModelPreset("digits", "diffusers-unet", "digits", directory=DIGITS_DIR),
        # the same data, a deeper UNet (two resnets per level: 18 skippable layers, 1.4x the
        # FLOPs) trained with LayerDrop, so that stage 2 has layers it can do without
        ModelPreset("digits-deep", "diffusers-unet", "digits",
                    directory=WEIGHTS_DIR / "digits-deep"),
        # openai/guided-diffusion ImageNet 64x64 (ADM; ADM-G with its classifier)
        ModelPreset(
            "adm64", "adm", "inception",
            weights=RemoteFile("64x64_diffusion.pt", f"{ADM_URL}/64x64_diffusion.pt",
                               flag="--checkpoint", what="ADM weights"),
            flags=ADM64_FLAGS,
            diffusion=dict(diffusion_steps=1000, noise_schedule="cosine"),
            classifier=RemoteFile("64x64_classifier.pt", f"{ADM_URL}/64x64_classifier.pt",
                                  flag="--classifier", what="ADM-G classifier"),
            classifier_flags=ADM64_CLASSIFIER_FLAGS,
            classifier_scale=1.0,  # guided-diffusion's README for 64x64 ADM-G
            # ADM's reference batch; its mu/sigma were computed by ADM's TensorFlow evaluator
            # (Inception resizing inside the graph), which is clean-fid's legacy_tensorflow mode
            ref_stats=RemoteFile(
                "VIRTUAL_imagenet64_labeled.npz",
                f"{ADM_URL}/ref_batches/imagenet/64/VIRTUAL_imagenet64_labeled.npz",
                flag="--ref-stats", what="FID reference statistics"),
            fid_mode="legacy_tensorflow", clip_denoised=True, batch_size_cpu=64),
        # google's DDPMs through diffusers: CIFAR-10 32x32, LSUN church and bedroom 256x256
        _ddpm("ddpm-cifar10", "google/ddpm-cifar10-32", cleanfid_stats("cifar10", 32, "train"),
              DDPM_CIFAR10_UNET),
        _ddpm("ddpm-church256", "google/ddpm-church-256",
              cleanfid_stats("lsun_church", 256, "train"), DDPM_LSUN256_UNET),
        # clean-fid has no LSUN-bedroom statistics: pass --ref-stats
        _ddpm("ddpm-bedroom256", "google/ddpm-bedroom-256", None, DDPM_LSUN256_UNET),
        # any unconditional diffusers UNet2DModel: --checkpoint DIR|HUB_ID, and a reference
        # (--ref-stats, --ref-images or --ref-teacher); clipped where its scheduler clips
        ModelPreset("diffusers", "diffusers-unet", "inception", clip_denoised=None,
                    batch_size_cpu=64),
        # Stable Diffusion v1.4 and v1.5 (text-to-image, in a VAE's latent space)
        _stable_diffusion("sd14", REFERENCE_HUB_ID),
        _stable_diffusion("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ]
}

# family -> the adapter that loads its presets (``from_preset(preset, options, device)``)
ADAPTERS: dict[str, type[DiffusionModel]] = {
    "diffusers-unet": DiffusersUNetModel,
    "adm": AdmModel,
    "stable-diffusion": StableDiffusionModel,
}


@dataclass(frozen=True)
class ModelOptions:
    """Per-run overrides of a preset (the command line's flags); hashable, so a model and a
    scorer are built once per process and options."""

    checkpoint: str | None = None  # weights file, diffusers directory or hub id
    classifier: str | None = None  # ADM-G classifier file
    classifier_scale: float | None = None  # None: the preset's default
    ref_stats: str | None = None  # FID reference statistics (.npz with mu, sigma)
    inception: str | None = None  # clean-fid's inception-2015-12-05.pt
    precision: str | None = None  # fp32 | bf16 | fp16; None: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile each skippable block
    batch_size: int | None = None  # images per network call; None: sized to the device
    prompts: str | None = None  # text-to-image: prompts file (one a line, or COCO captions)
    guidance_scale: float | None = None  # text-to-image: classifier-free guidance; None: preset's
    ref_images: str | None = None  # FID reference: clean-fid statistics of a folder of images
    ref_teacher: int | None = None  # FID reference: the model's own samples at this many steps

    def __post_init__(self):
        check_batch_size(self.batch_size)  # before anything loads (--estimate loads nothing)
        # one reference at a time: which one scored a study is recorded and checked
        given = [flag for flag, value in (("--ref-stats", self.ref_stats),
                                          ("--ref-images", self.ref_images),
                                          ("--ref-teacher", self.ref_teacher))
                 if value is not None]
        if len(given) > 1:
            raise UsageError(f"{' and '.join(given)}: give one FID reference at a time")
        teacher = self.ref_teacher
        if teacher is not None and (not isinstance(teacher, int) or isinstance(teacher, bool)
                                    or teacher < 1):
            raise UsageError(f"--ref-teacher must be a number of steps of at least 1, got "
                             f"{teacher!r}")


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(PRESETS)}")
    return PRESETS[name]


# a command samples one model; a second spares reloading the pair a notebook or a test goes
# back and forth between. Each kept model holds its weights (GBs for Stable Diffusion) for as
# long as it is cached, so not every model the process ever loaded.
@lru_cache(maxsize=2)
def load_model(name: str, device: str = "cpu", options: ModelOptions | None = None
               ) -> DiffusionModel:
    preset = get_preset(name)
    options = options or ModelOptions()
    if preset.prompts is None and (options.prompts or options.guidance_scale is not None):
        raise UsageError(f"model {name!r} is not text-conditional: --prompts and "
                         "--guidance-scale do not apply")
    return ADAPTERS[preset.family].from_preset(preset, options, device)


# ---- the model and scorer a study (or an exported schedule) was made with -----------------

def check_same_model(model: DiffusionModel, stored: str | None, what: str) -> None:
    """Refuse, in one line naming the flag to pass, a model other than the one ``what`` (a
    study, a schedule file) recorded as ``model_weights``; nothing recorded: nothing to check."""
    if stored is None or model.fingerprint == stored:
        return
    raise UsageError(f"{what} was made with model weights {stored}, but these flags load "
                     f"{model.fingerprint}: {weights_hint(stored, model.fingerprint, model.name)}")


def guidance_of(fingerprint: str | None) -> float | None:
    """The classifier-free guidance scale a text-to-image model's fingerprint records (None:
    not a text-to-image model)."""
    if not fingerprint:
        return None
    scale = _fingerprint_parts(fingerprint)["guidance"]
    return None if scale is None else float(scale)


def _fingerprint_parts(fingerprint: str) -> dict:
    """``DiffusionModel.fingerprint``: ``<weights>[+classifier@<digest>*<scale>]
    [+prompts@<digest>*<guidance>][+<precision>]``."""
    weights, *rest = fingerprint.split("+")
    parts = {"weights": weights, "classifier": None, "scale": "0", "precision": "fp32",
             "prompts": None, "guidance": None}
    for part in rest:
        if part.startswith("classifier@"):
            parts["classifier"], _, parts["scale"] = part[len("classifier@"):].partition("*")
        elif part.startswith("prompts@"):
            parts["prompts"], _, parts["guidance"] = part[len("prompts@"):].partition("*")
        elif part in PRECISIONS:
            parts["precision"] = part
    return parts


def weights_hint(stored: str, loaded: str, model: str) -> str:
    """The flags that load preset ``model``'s network whose fingerprint is ``stored``
    (``loaded``: the fingerprint these flags load)."""
    preset = PRESETS.get(model)
    bundled = preset is not None and preset.directory is not None
    want, have = _fingerprint_parts(stored), _fingerprint_parts(loaded)
    hints = []
    if want["weights"] != have["weights"]:
        if bundled:  # no flag brings them back
            return "the bundled weights are not the ones it was made with: make a new study"
        hints.append(f"the --checkpoint whose digest is {want['weights']}")
    if want["scale"] != have["scale"]:
        hints.append(f"--classifier-scale {want['scale']}")
    if want["classifier"] and have["classifier"] and want["classifier"] != have["classifier"]:
        hints.append(f"the --classifier whose digest is {want['classifier']}")
    if want["prompts"] and have["prompts"] and want["prompts"] != have["prompts"]:
        hints.append(f"the --prompts whose prompt list's digest is {want['prompts']}")
    if want["guidance"] and have["guidance"] and want["guidance"] != have["guidance"]:
        hints.append(f"--guidance-scale {want['guidance']}")
    if want["precision"] != have["precision"]:
        hints.append(f"--precision {want['precision']}")
    return "pass " + (" and ".join(hints) or "the --checkpoint, --classifier, "
                      "--classifier-scale, --prompts, --guidance-scale and --precision it was "
                      "made with")
