"""What a study will cost, known before it runs: per stage, its candidates, images, network
evaluations, GFLOPs and FID-network images, and the hours they take here and on named GPUs.

The counts are arithmetic on the study's configuration. The network's GFLOPs are counted by
torch's FLOP counter on the preset's architecture built on the ``meta`` device: no weights, no
memory, so a study of a model whose files are not here yet can be priced. Time is projected three
ways, each said as such: from timing one small batch of the loaded model on this machine (when the
model can be loaded), from a table of throughputs measured on a named GPU (``MEASURED``), and
otherwise from the FLOPs at a stated share of the device's peak.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import cache

from autodiff_optuna.errors import UsageError

# Peak dense bf16 matrix throughput used for a network with no measured row, TFLOP/s, and the
# share of it a diffusion UNet reaches (torch.compile, bf16, large batches). The H100 and H200
# share one GH100 compute die; the H200's extra memory bandwidth is not modelled.
PEAK_TFLOPS = {"h100": 765.0, "h200": 765.0}
UTILISATION = 0.45
GPUS = tuple(PEAK_TFLOPS)
# Images per second per network evaluation, measured on one H200 (random weights, batch 256-512,
# ../shared/reference/ANCHORS.md; bench/gpu.py measures the same unit). H100 rows: the H200's.
MEASURED = {
    "adm64": 1709.0,  # guided-diffusion's ImageNet-64 UNet, torch.compile, bf16
    "inception": 7192.0,  # clean-fid's Inception-V3 at 299 px, fp16
}
INCEPTION_GFLOPS = 11.4  # per image at 299 px, as the same table counts it
# Share of stage 1's images that multi-fidelity pruning leaves to be sampled, measured on the
# bundled digits model at its preset (rungs from 125 of 1000 images, 40th percentile).
PRUNED_STAGE1_SHARE = 0.52


@dataclass(frozen=True)
class ImageCost:
    """GFLOPs of one image's parts, one network evaluation each."""

    network: float  # the searched network, one call
    calls_per_step: int  # 2 under classifier-free guidance (conditional and unconditional)
    classifier: float  # ADM-G: the classifier's forward and input-gradient, per step
    decode: float  # a latent model's VAE decode, once per image
    fid_network: str  # "inception" or the bundled "digits" CNN
    fid_gflops: float  # the FID network, once per image


@dataclass
class StageEstimate:
    stage: int
    candidates: int
    images: int  # expected images sampled
    images_at_most: int  # every candidate scored on all its images
    network_evaluations: int  # calls of the searched network (guidance's two counted)
    classifier_gradients: int  # ADM-G
    decoded_images: int  # latent models: VAE decodes
    fid_images: int  # images through the FID network
    fid_computations: int  # Frechet distances (one per reported prefix)
    gflops: float
    hours: dict = field(default_factory=dict)  # device ("cpu", "h100", "h200") -> hours


@dataclass
class StudyEstimate:
    name: str
    steps: int
    samples: int
    stages: list[StageEstimate]
    assumptions: list[str]

    @property
    def total_hours(self) -> dict:
        devices = self.stages[0].hours if self.stages else {}
        return {d: sum(s.hours[d] for s in self.stages) for d in devices}

    def as_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "samples": self.samples,
                "stages": [asdict(s) for s in self.stages], "total_hours": self.total_hours,
                "assumptions": self.assumptions}

    def lines(self) -> list[str]:
        out = [f"cost of {self.name} (K={self.steps}, {self.samples} images per candidate):"]
        for s in self.stages:
            saved = (f" (at most {s.images_at_most:,})" if s.images != s.images_at_most else "")
            out.append(
                f"  stage {s.stage}: {s.candidates} candidates, {s.images:,} images{saved}, "
                f"{s.network_evaluations:,} network evaluations"
                + (f" + {s.classifier_gradients:,} classifier gradients"
                   if s.classifier_gradients else "")
                + f", {s.gflops / 1e3:,.1f} TFLOP, {s.fid_images:,} FID-network images; "
                + ", ".join(f"{d} {format_hours(h)}" for d, h in s.hours.items()))
        out.append("  total: " + ", ".join(f"{d} {format_hours(h)}"
                                            for d, h in self.total_hours.items()))
        out += [f"  assuming {a}" for a in self.assumptions]
        return out

    def preset_comment(self) -> str:
        """The line a study preset file states its projected cost in (a test keeps it true)."""
        evaluations = sum(s.network_evaluations for s in self.stages)
        fid_images = sum(s.fid_images for s in self.stages)
        return (f"# cost (study --estimate): {evaluations:,} network evaluations, "
                f"{fid_images:,} FID-network images; "
                f"{format_hours(self.total_hours['h200'])} on one H200")

    def json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)


def format_hours(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{hours:.1f}h"


# ---- what one image costs, from the architecture alone ------------------------------------

@cache
def image_cost(model: str) -> ImageCost:
    """GFLOPs of one image's parts for a preset, counted on its architecture without weights."""
    from autodiff_optuna.models.registry import get_preset

    preset = get_preset(model)
    if preset.family == "adm":
        return _adm_cost(preset)
    if preset.family == "stable-diffusion":
        return _stable_diffusion_cost(preset)
    return _unet2d_cost(preset)


def _counted(run) -> float:
    """GFLOPs of ``run()`` on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter:
        run()
    return counter.get_total_flops() / 1e9


def _fid_cost(preset) -> tuple[str, float]:
    if preset.fid == "inception":
        return "inception", INCEPTION_GFLOPS
    return preset.fid, 0.0  # the bundled digits CNN: timed with the study, not priced


def _unet2d_cost(preset) -> ImageCost:
    if preset.directory is None:
        raise UsageError(f"model {preset.name!r}: its architecture is in its checkpoint's "
                         "config.json, which is not bundled; estimate a study of a preset "
                         "with a known architecture")
    import torch
    from diffusers import UNet2DModel

    config = UNet2DModel.load_config(preset.directory / "unet")

    def run():
        unet = UNet2DModel.from_config(config)
        size = unet.config.sample_size
        with torch.no_grad():
            unet(torch.zeros(1, unet.config.in_channels, size, size), torch.tensor(1))

    return ImageCost(_counted(run), 1, 0.0, 0.0, *_fid_cost(preset))


def _adm_cost(preset) -> ImageCost:
    import torch

    from autodiff_optuna.models.adm import build_classifier, build_unet

    size = preset.flags["image_size"]
    label = dict(y=torch.zeros(1, dtype=torch.long, device="meta"))

    def unet():
        with torch.no_grad():
            build_unet(preset.flags)(torch.zeros(1, 3, size, size), torch.zeros(1),
                                     **(label if preset.flags.get("class_cond") else {}))

    def classifier_gradient():  # what models/adm.py's classifier_grad runs per step
        net = build_classifier(preset.classifier_flags).requires_grad_(False)
        x = torch.zeros(1, 3, size, size, requires_grad=True)
        torch.log_softmax(net(x, torch.zeros(1)), -1)[:, 0].sum().backward()

    guided = preset.classifier is not None and preset.classifier_scale > 0
    return ImageCost(_counted(unet), 1, _counted(classifier_gradient) if guided else 0.0,
                     0.0, *_fid_cost(preset))


def _stable_diffusion_cost(preset) -> ImageCost:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from autodiff_optuna.models.registry import SD_V1_UNET, SD_V1_VAE

    size = SD_V1_UNET["sample_size"]

    def unet():
        with torch.no_grad():
            UNet2DConditionModel(**SD_V1_UNET)(
                torch.zeros(1, SD_V1_UNET["in_channels"], size, size), torch.tensor(1),
                encoder_hidden_states=torch.zeros(1, 77, SD_V1_UNET["cross_attention_dim"]))

    def decode():
        with torch.no_grad():
            AutoencoderKL(**SD_V1_VAE).decode(torch.zeros(1, SD_V1_VAE["latent_channels"],
                                                          size, size))

    guided = (preset.guidance_scale or 1.0) != 1.0
    return ImageCost(_counted(unet), 2 if guided else 1, 0.0, _counted(decode),
                     *_fid_cost(preset))


# ---- counting a study -----------------------------------------------------------------------

def stage_counts(stage: int, candidates: int, config, cost: ImageCost,
                 rungs: list[int]) -> StageEstimate:
    at_most = candidates * config.samples
    pruned = stage == 1 and bool(rungs)
    images = round(at_most * PRUNED_STAGE1_SHARE) if pruned else at_most
    evaluations = images * config.steps
    return StageEstimate(
        stage=stage, candidates=candidates, images=images, images_at_most=at_most,
        network_evaluations=evaluations * cost.calls_per_step,
        classifier_gradients=evaluations if cost.classifier else 0,
        decoded_images=images if cost.decode else 0, fid_images=images,
        fid_computations=candidates * (len(rungs) + 1 if stage == 1 else 1),
        gflops=evaluations * (cost.calls_per_step * cost.network + cost.classifier)
        + images * (cost.decode + cost.fid_gflops))


def gpu_hours(stage: StageEstimate, model: str, cost: ImageCost, gpu: str) -> float:
    """Measured throughput where the table has the network, else FLOPs at ``UTILISATION``."""
    flops_per_s = PEAK_TFLOPS[gpu] * 1e3 * UTILISATION  # GFLOP/s
    if model in MEASURED:
        network = stage.network_evaluations / MEASURED[model]
    else:
        network = stage.network_evaluations * cost.network / flops_per_s
    other = (stage.classifier_gradients * cost.classifier
             + stage.decoded_images * cost.decode) / flops_per_s
    fid = stage.fid_images / MEASURED["inception"] if cost.fid_network == "inception" else 0.0
    return (network + other + fid) / 3600


@dataclass(frozen=True)
class HereTiming:
    """This machine's speed, from one small batch of the loaded model and its FID network."""

    seconds_per_image: float  # sampling at the study's K steps plus FID features
    seconds_per_fid: float  # one Frechet distance against the reference
    how: str


def time_here(model, scorer, steps: int, batch: int = 256, repeats: int = 2) -> HereTiming:
    """Time one batch through the path a trial takes (uniform steps, full network)."""
    import numpy as np

    from autodiff_optuna.metrics.fid import fid_from_features, to_uint8
    from autodiff_optuna.sampling import draw, sample

    n = batch
    noise = draw(model, n, seed=0)
    timesteps = np.linspace(model.num_train_timesteps - 1, 0, steps).round().astype(int)
    per_image, per_fid = math.inf, math.inf
    features = None
    for _ in range(repeats):  # the first pass pays one-off set-up costs; keep the fastest
        start = time.perf_counter()
        features = scorer.features(to_uint8(sample(model, timesteps.tolist(), noise)))
        per_image = min(per_image, (time.perf_counter() - start) / n)
    reps = np.concatenate([features] * math.ceil((scorer.feature_dim + 2) / n))
    start = time.perf_counter()
    fid_from_features(reps, scorer.ref_mu, scorer.ref_sigma)
    per_fid = time.perf_counter() - start
    return HereTiming(per_image, per_fid, f"one batch of {n} images of the loaded model "
                                          "timed on this machine")


def cpu_gflops_per_s() -> float:
    """This machine's throughput on a UNet-like 3x3 convolution, GFLOP/s."""
    import torch

    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(8, 128, 32, 32)
    flops = 2 * 8 * 128 * 128 * 9 * 32 * 32
    best = math.inf
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def here_hours(stage: StageEstimate, cost: ImageCost, timing: HereTiming | None,
               steps: int, gflops_per_s: float | None) -> float:
    if timing is not None:
        return (stage.images * timing.seconds_per_image
                + stage.fid_computations * timing.seconds_per_fid) / 3600
    return stage.gflops / gflops_per_s / 3600


def estimate(config, targets, name: str, stages=(1, 2), timing: HereTiming | None = None
             ) -> StudyEstimate:
    """The cost of running ``stages`` of a study of ``config`` to ``targets``."""
    from autodiff_optuna.search.fidelity import rungs

    cost = image_cost(config.model)
    counts = {1: targets.trials, 2: targets.stage2_trials}
    rows = [stage_counts(s, counts[s], config, cost,
                         rungs(config.samples, config.min_samples) if s == 1 else [])
            for s in stages]
    gflops_per_s = None if timing is not None else cpu_gflops_per_s()
    for row in rows:
        row.hours["cpu"] = here_hours(row, cost, timing, config.steps, gflops_per_s)
        for gpu in GPUS:
            row.hours[gpu] = gpu_hours(row, config.model, cost, gpu)
    return StudyEstimate(name, config.steps, config.samples, rows,
                         assumptions(config, stages, cost, timing, gflops_per_s))


def assumptions(config, stages, cost: ImageCost, timing: HereTiming | None,
                gflops_per_s: float | None) -> list[str]:
    said = [f"{cost.network:.4g} GFLOP per network call, counted on the architecture"
            + (" (two calls a step: classifier-free guidance)" if cost.calls_per_step == 2
               else "")]
    if cost.classifier:
        said.append(f"{cost.classifier:.4g} GFLOP per classifier gradient (one a step)")
    if cost.decode:
        said.append(f"{cost.decode:.4g} GFLOP per VAE decode (one an image); the text "
                    "encoder is not counted")
    if config.min_samples and 1 in stages:
        said.append(f"multi-fidelity pruning leaves {PRUNED_STAGE1_SHARE:.0%} of stage 1's "
                    "images to sample (measured on the bundled digits model)")
    if 2 in stages:
        said.append("stage 2 candidates cost the full network (their skips make them cheaper)")
    said.append("cpu: " + (timing.how if timing is not None else
                           f"the FLOPs at {gflops_per_s:.0f} GFLOP/s, a 3x3 convolution's "
                           "speed measured on this machine"))
    measured = [m for m in MEASURED if m in (config.model, cost.fid_network)]
    said.append("h100/h200: " + (", ".join(f"{m} at its {MEASURED[m]:.0f} img/s measured on an "
                                           "H200" for m in measured) + "; "
                                 if measured else "")
                + f"other networks at {UTILISATION:.0%} of {PEAK_TFLOPS['h200']:.0f} TFLOP/s "
                "bf16; the H100 taken as fast as the H200 (same compute die)")
    return said
