"""What a study will cost, known before it runs: per stage, its candidates, images, network
evaluations, GFLOPs and FID-network images, and the hours they take here and on named GPUs.

The counts are arithmetic on the study's configuration. The network's GFLOPs are counted by
torch's FLOP counter on the preset's architecture built on the ``meta`` device: no weights, no
memory, so a study of a model whose files are not here yet can be priced. ``--model diffusers``
(any checkpoint) has no architecture of its own: it is priced on the loaded ``--checkpoint``'s
(``DiffusionModel.architecture``), whose weights must be here. Besides its candidates,
a stage samples what the search does around them: the confirmation of what the result can name
(``confirm``: each on the study's full image count) and, in stage 2, the skip-cost prior
(``skip_cost``); stage 2's carried stage-1 elites are never sampled again.

Time is projected three ways, each said as such: from timing the study's own work on the loaded
model on this machine (when the model can be loaded: its sampling and FID features at two batch
sizes, its bookkeeping on a temporary study, and this process's start-up), from a table of
throughputs measured on a named GPU (``MEASURED``), and otherwise from the FLOPs at a stated share
of the device's peak.
"""

import json
import math
import os
import statistics
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
# Multi-fidelity pruning in stage 1: after the pruner's first complete trials, the share of
# candidates that completes; the others are counted as stopped at the first rung (some stop at a
# later one: the share absorbs them). 0.24 is the mean over the 42 pruned digits and digits-deep
# stage-1 studies of our sampler in BENCHMARKS.md's "What stage 1's candidates and images buy"
# (7 budgets of 20,000 to 100,000 images, rungs from 125 or 250, 3 seeds each; per study 0.11
# to 0.48, median 0.21). The K=4 presets' stage 1 (rungs from 250) sampled 44% of its images;
# this says 46%. (0.42, measured on an earlier round's sampler, over-counted them by a third.)
COMPLETE_SHARE = 0.24
# ... and where our sampler moves steps in noise levels (``--step-moves noise`` or ``stretch``),
# whose mutation moves most steps near where they were: fewer ruinous children, more complete.
# 0.30 fits the stage-1 images of the ten digits-k4 studies of "Since: local moves in noise
# levels" (54,050 a study with confirmation's, about 50,050 without, against the 45,850 that
# 0.24 says; 21 to 39 of 100 candidates complete, counted in their databases).
NOISE_MOVES_COMPLETE_SHARE = 0.30
# Candidates a stage confirms (``confirm.to_confirm``). Stage 1: its ``STAGE1_TOP`` best and the
# uniform baseline (16 stage-1 digits studies of 100 candidates confirmed 3 to 12, median 4: more
# only where confirmed FIDs reorder the top). Stage 2: its best and the points of the thinned
# front no worse than the uniform schedule, taken as one in ten of its trials, 2 to 12 (ranked by
# expected FIDs, digits' three preset studies confirmed 5, 5 and 7 stage-2 points of 80
# trials, digits-deep's 12, 5 and 13 of 240, the cheaper protocol 1 to 4 of 10).
STAGE2_CONFIRMED_SHARE = 0.1
STAGE2_CONFIRMED_RANGE = (2, 12)
# This machine's timing (``time_here``): the largest batch timed (a study's larger batches are
# extrapolated, per image), and the synthetic trials its bookkeeping is timed on
TIMING_BATCH = 256
TIMING_TRIALS = 6


def complete_share(config) -> float:
    """Stage 1's share of complete candidates after the pruner's first few: by how our sampler
    moves its steps (another sampler's: ``COMPLETE_SHARE``)."""
    from autodiff_optuna.search.config import NOISE_MOVES

    ours_in_noise = config.sampler == "evolutionary" and config.step_moves in NOISE_MOVES
    return NOISE_MOVES_COMPLETE_SHARE if ours_in_noise else COMPLETE_SHARE


@dataclass(frozen=True)
class ImageCost:
    """GFLOPs of one image's parts, one network evaluation each."""

    network: float  # the searched network, one call
    calls_per_step: int  # 2 under classifier-free guidance (conditional and unconditional)
    classifier: float  # ADM-G: the classifier's forward and input-gradient, per step
    decode: float  # a latent model's VAE decode, once per image
    fid_network: str  # "inception" or the bundled "digits" CNN
    fid_gflops: float  # the FID network, once per image
    layers: int = 0  # skippable layers (stage 2's masks and skip-cost prior)


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
    fid_computations: int  # Frechet distances (one per reported prefix and confirmed candidate)
    gflops: float
    hours: dict = field(default_factory=dict)  # device ("cpu", "h100", "h200") -> hours
    # what the stage samples besides its candidates, counted in the totals above (not in images)
    confirmed: int = 0  # candidates confirmed on the confirmation noise, ``samples`` images each
    confirmation_images: int = 0
    prior_images: int = 0  # stage 2: the skip-cost prior's (1 + K x L small samplings)
    total_images: int = 0  # images + confirmation_images + prior_images
    samplings: int = 0  # calls of the sampler (each K network calls on one batch)


@dataclass
class StudyEstimate:
    name: str
    steps: int
    samples: int
    stages: list[StageEstimate]
    assumptions: list[str]
    startup_seconds: float = 0.0  # this machine's: the process's start-up, once per study command
    # stage 2 ended at its patience as early as it can (``--stage2-patience``): its candidates,
    # and the whole study's hours then; None: no patience, or no stage 2
    earliest: dict | None = None

    @property
    def total_hours(self) -> dict:
        devices = self.stages[0].hours if self.stages else {}
        total = {d: sum(s.hours[d] for s in self.stages) for d in devices}
        if "cpu" in total:
            total["cpu"] += self.startup_seconds / 3600
        return total

    def as_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "samples": self.samples,
                "stages": [asdict(s) for s in self.stages], "total_hours": self.total_hours,
                "startup_hours": {"cpu": self.startup_seconds / 3600},
                "assumptions": self.assumptions,
                **({"earliest": self.earliest} if self.earliest else {})}

    def lines(self) -> list[str]:
        out = [f"cost of {self.name} (K={self.steps}, {self.samples} images per candidate):"]
        for s in self.stages:
            saved = (f" (at most {s.images_at_most:,})" if s.images != s.images_at_most else "")
            out.append(
                f"  stage {s.stage}: {s.candidates} candidates, {s.images:,} images{saved}"
                + (f" + {s.confirmation_images:,} confirming {s.confirmed}" if s.confirmed
                   else "")
                + (f" + {s.prior_images:,} for the skip-cost prior" if s.prior_images else "")
                + f", {s.network_evaluations:,} network evaluations"
                + (f" + {s.classifier_gradients:,} classifier gradients"
                   if s.classifier_gradients else "")
                + f", {s.gflops / 1e3:,.1f} TFLOP, {s.fid_images:,} FID-network images; "
                + ", ".join(f"{d} {format_hours(h)}" for d, h in s.hours.items()))
        if self.startup_seconds:
            out.append(f"  start-up: cpu {format_hours(self.startup_seconds / 3600)}")
        out.append("  total: " + ", ".join(f"{d} {format_hours(h)}"
                                            for d, h in self.total_hours.items()))
        if self.earliest:
            hours = self.earliest["total_hours"]
            out.append(f"  total if stage 2 ends at its patience, after its first "
                       f"{self.earliest['stage2_candidates']} candidates: "
                       + ", ".join(f"{d} {format_hours(h)}" for d, h in hours.items()))
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
    if seconds < 1:
        return "under 1s"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{hours:.1f}h"


# ---- what one image costs, from the architecture alone ------------------------------------

@cache
def image_cost(model: str, architecture: str | None = None) -> ImageCost:
    """GFLOPs of one image's parts for a preset, counted on its architecture without weights;
    ``architecture``: a loaded model's own (``DiffusionModel.architecture``), where it has one."""
    from autodiff_optuna.models.registry import get_preset

    preset = get_preset(model)
    if preset.family == "adm":
        return _adm_cost(preset)
    if preset.family == "stable-diffusion":
        return _stable_diffusion_cost(preset)
    return _unet2d_cost(preset, architecture)


def _counted(run) -> float:
    """GFLOPs of ``run()`` on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter:
        run()
    return counter.get_total_flops() / 1e9


def _layers(build, prefixes: tuple[str, ...], bypass_for) -> int:
    """How many skippable layers the network ``build()`` makes has, found as the model's adapter
    finds them, on the meta device."""
    import torch

    from autodiff_optuna.models.layers import find_skippable_layers

    with torch.device("meta"):
        return len(find_skippable_layers(build(), prefixes, bypass_for))


def _fid_cost(preset) -> tuple[str, float]:
    if preset.fid == "inception":
        return "inception", INCEPTION_GFLOPS
    return preset.fid, 0.0  # the bundled digits CNN: timed with the study, not priced


def priced_without_weights(model: str) -> bool:
    """Whether the preset knows its network (else only a loaded checkpoint's config does)."""
    from autodiff_optuna.models.registry import get_preset

    preset = get_preset(model)
    return preset.family != "diffusers-unet" or _known_unet(preset) is not None


def _known_unet(preset) -> dict | None:
    """A diffusers preset's UNet2DModel config without its weights: the bundled model's file,
    or the hub checkpoint's values in the registry; None for ``diffusers`` (any checkpoint)."""
    if preset.directory is not None:
        from diffusers import UNet2DModel

        return UNet2DModel.load_config(preset.directory / "unet")
    return preset.unet_config or None


def _unet2d_cost(preset, architecture: str | None) -> ImageCost:
    import torch
    from diffusers import UNet2DModel

    from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel, bypass_for

    config = json.loads(architecture) if architecture is not None else _known_unet(preset)
    if config is None:
        raise UsageError(f"model {preset.name!r}: its architecture is in its checkpoint's "
                         "config.json; pass --checkpoint to price a study of it")

    def run():
        unet = UNet2DModel.from_config(config)
        size = unet.config.sample_size
        with torch.no_grad():
            unet(torch.zeros(1, unet.config.in_channels, size, size), torch.tensor(1))

    layers = _layers(lambda: UNet2DModel.from_config(config),
                     DiffusersUNetModel.SKIPPABLE_PREFIXES, bypass_for)
    return ImageCost(_counted(run), 1, 0.0, 0.0, *_fid_cost(preset), layers=layers)


def _adm_cost(preset) -> ImageCost:
    import torch

    from autodiff_optuna.models.adm import (
        AdmModel,
        adm_bypass_for,
        build_classifier,
        build_unet,
    )

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
    layers = _layers(lambda: build_unet(preset.flags), AdmModel.SKIPPABLE_PREFIXES,
                     adm_bypass_for)
    return ImageCost(_counted(unet), 1, _counted(classifier_gradient) if guided else 0.0,
                     0.0, *_fid_cost(preset), layers=layers)


def _stable_diffusion_cost(preset) -> ImageCost:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from autodiff_optuna.models.registry import SD_V1_UNET, SD_V1_VAE
    from autodiff_optuna.models.stable_diffusion import StableDiffusionModel, sd_bypass_for

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
    layers = _layers(lambda: UNet2DConditionModel(**SD_V1_UNET),
                     StableDiffusionModel.SKIPPABLE_PREFIXES, sd_bypass_for)
    return ImageCost(_counted(unet), 2 if guided else 1, 0.0, _counted(decode),
                     *_fid_cost(preset), layers=layers)


# ---- counting a study -----------------------------------------------------------------------

def stage_counts(stage: int, candidates: int, config, cost: ImageCost,
                 rungs: list[int]) -> StageEstimate:
    from autodiff_optuna.search.confirm import IMAGES_PER_SEARCH_IMAGE

    at_most = candidates * config.samples
    images, samplings = searched(candidates, config.samples, rungs, complete_share(config))
    confirmed = confirmed_candidates(stage, candidates)
    prior_samplings, prior_batch = prior_size(config, cost) if stage == 2 else (0, 0)
    confirmation = confirmed * config.samples * IMAGES_PER_SEARCH_IMAGE
    prior = prior_samplings * prior_batch
    total = images + confirmation + prior
    evaluations = total * config.steps
    return StageEstimate(
        stage=stage, candidates=candidates, images=images, images_at_most=at_most,
        network_evaluations=evaluations * cost.calls_per_step,
        classifier_gradients=evaluations if cost.classifier else 0,
        decoded_images=total if cost.decode else 0, fid_images=total,
        fid_computations=samplings + confirmed,  # the prior's distances are diagonal: free
        gflops=evaluations * (cost.calls_per_step * cost.network + cost.classifier)
        + total * (cost.decode + cost.fid_gflops),
        confirmed=confirmed, confirmation_images=confirmation, prior_images=prior,
        total_images=total, samplings=samplings + confirmed + prior_samplings)


def searched(candidates: int, samples: int, rungs: list[int],
             share: float = COMPLETE_SHARE) -> tuple[int, int]:
    """Expected images and samplings of a stage's candidates. With ``rungs`` (stage 1's
    multi-fidelity pruning) the pruner's first ``STARTUP_TRIALS`` complete, then ``share`` of
    the rest (``complete_share``); the others stop at the first rung, one sampling in."""
    from autodiff_optuna.search.fidelity import STARTUP_TRIALS

    if not rungs:
        return candidates * samples, candidates
    startup = min(candidates, STARTUP_TRIALS)
    complete = startup + (candidates - startup) * share
    stopped = candidates - complete
    return (round(complete * samples + stopped * rungs[0]),
            round(complete * (len(rungs) + 1) + stopped))


def confirmed_candidates(stage: int, candidates: int) -> int:
    """How many of a stage's candidates its confirmation re-scores: an assumption
    (``STAGE2_CONFIRMED_SHARE``), since which it confirms depends on the FIDs found."""
    from autodiff_optuna.search.confirm import STAGE1_TOP

    if stage == 1:
        return min(candidates, STAGE1_TOP + 1)  # and the uniform baseline
    low, high = STAGE2_CONFIRMED_RANGE
    return min(candidates, max(low, min(high, round(candidates * STAGE2_CONFIRMED_SHARE))))


def prior_size(config, cost: ImageCost) -> tuple[int, int]:
    """Stage 2's skip-cost prior: its samplings (the full network, then each of the L layers
    skipped at each of the K steps) and the images each takes."""
    from autodiff_optuna.search.skip_cost import prior_images

    return 1 + config.steps * cost.layers, prior_images(config.samples)


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
    """This machine's speed at the study's own work, timed on the loaded model and FID network."""

    seconds_per_image: float  # sampling at the study's K steps plus FID features, per image
    seconds_per_fid: float  # one Frechet distance against the reference
    how: str
    seconds_per_sampling: float = 0.0  # each sampling's fixed part: K network calls' dispatch
    seconds_per_trial: float = 0.0  # a trial's bookkeeping: sampler, storage, the checks
    seconds_to_create: float = 0.0  # creating stage 1's study, as ``stages.open_stage1`` does
    startup_seconds: float = 0.0  # the process to here (imports, loads, this timing), the database


def time_here(ctx, repeats: int = 2) -> HereTiming:
    """Time the study's own work here, as it will run: its solver on the loaded model at its K
    steps (uniform spacing) with this process's torch threads, after a warm-up (the first
    sampling pays one-off set-up). Sampling plus FID features is timed at two batch sizes, the
    skip-cost prior's and the study's (at most ``TIMING_BATCH``), and fitted as a fixed part per
    sampling plus a part per image; the mean of the runs, not the fastest, since a study's time
    is a sum and a loaded machine's runs vary. Then one Frechet distance, the bookkeeping
    (``time_bookkeeping``), and this process's age (``process_seconds``): a study spends the same
    start-up, this timing included (not with ``--quiet``), before its first trial."""
    import numpy as np
    import torch

    from autodiff_optuna.metrics.fid import fid_from_features, to_uint8
    from autodiff_optuna.sampling import draw, sample
    from autodiff_optuna.sampling.rules import SOLVERS
    from autodiff_optuna.search.skip_cost import prior_images

    started = time.perf_counter()
    model, scorer, config = ctx.model, ctx.scorer, ctx.config
    large = min(TIMING_BATCH, config.samples, model.batch_size or config.samples)
    small = min(prior_images(config.samples), large)
    noise = draw(model, large, seed=0)
    solver = config.solver if config.solver in SOLVERS else "dpmpp2m"  # "search": per step

    def run(n: int) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        images = sample(model, ctx.spacings["uniform"], noise.subset(0, n), solver)
        features = scorer.features(to_uint8(images))
        return time.perf_counter() - start, features

    run(small)  # the warm-up
    t_small = statistics.mean(run(small)[0] for _ in range(repeats + 1))
    timed = [run(large) for _ in range(repeats)]
    per_image, per_sampling = _linear_fit(small, t_small, large,
                                          statistics.mean(t for t, _ in timed))
    features = timed[-1][1]
    reps = np.concatenate([features] * math.ceil((scorer.feature_dim + 2) / large))
    start = time.perf_counter()
    fid_from_features(reps, scorer.ref_mu, scorer.ref_sigma)
    per_fid = time.perf_counter() - start
    opening, creating, per_trial = time_bookkeeping(ctx)
    age = process_seconds()
    startup = (age if age is not None else time.perf_counter() - started) + opening
    how = (f"timed here on the loaded model, {torch.get_num_threads()} torch thread(s), after a "
           f"warm-up: {config.steps}-step {solver} sampling + FID features of {small} and "
           f"{large} images (mean of {repeats + 1} and {repeats} runs, fitted as "
           f"{per_sampling * 1e3:.0f} ms a sampling + {per_image * 1e3:.2f} ms an image; "
           "larger batches extrapolated), "
           f"{per_fid * 1e3:.0f} ms a Frechet distance, {per_trial * 1e3:.0f} ms of bookkeeping a "
           f"trial and {creating:.1f}s to create stage 1's study (both on a temporary SQLite "
           f"study), start-up {startup:.0f}s: "
           + ("this process's age (Python, torch, the model and FID network, this timing)"
              if age is not None else "this timing only (the process's age is unreadable here)")
           + " and opening a database")
    return HereTiming(per_image, per_fid, how, per_sampling, per_trial, creating, startup)


def _linear_fit(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """Seconds per image and per sampling from two timed batch sizes, t = sampling + n x image;
    all per image where there is one size, or noise makes either part negative."""
    if n2 > n1:
        per_image = (t2 - t1) / (n2 - n1)
        per_sampling = t1 - n1 * per_image
        if per_image > 0 and per_sampling >= 0:
            return per_image, per_sampling
    return t2 / n2, 0.0


def time_bookkeeping(ctx, trials: int = TIMING_TRIALS) -> tuple[float, float, float]:
    """Seconds to open a new study database, to create stage 1's study in it (whatever
    ``open_stage1`` does for a new study: its first trials queued, its records written), and
    per trial of everything but sampling and FID (the sampler, the objective's checks, Optuna's
    storage, the run loop): the search's own path with a synthetic score, as
    ``bench/storage.py`` runs it, on a temporary SQLite file (another database differs:
    BENCHMARKS.md). A study pays its creation again: the timing costs what it measures. The DP
    spacing is fitted first, off the creation's clock: the context keeps it, so the study made
    after does not fit it again, and this process's age (``startup_seconds``) counts it once."""
    import tempfile

    from autodiff_optuna.search.run import run
    from autodiff_optuna.search.stages import dp_candidates, open_stage1
    from autodiff_optuna.storage import open_storage

    dp_candidates(ctx)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        storage = open_storage(f"sqlite:///{folder}/timing.db", writable=True)
        opened = time.perf_counter()
        study = open_stage1(ctx, "timing", storage)
        created = time.perf_counter()
        run(ctx, study, trials, progress=False, score=lambda c: float(sum(c.timesteps)))
        done = time.perf_counter()
        storage.engine.dispose()
    return opened - start, created - opened, (done - created) / trials


def process_seconds() -> float | None:
    """How long this process has run (Linux's /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:  # the start time: field 22, after the ")" of the name
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


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
        return (stage.samplings * timing.seconds_per_sampling
                + stage.total_images * timing.seconds_per_image
                + stage.fid_computations * timing.seconds_per_fid
                + stage.candidates * timing.seconds_per_trial
                + (timing.seconds_to_create if stage.stage == 1 else 0.0)) / 3600
    return stage.gflops / gflops_per_s / 3600


def estimate(config, targets, name: str, stages=(1, 2), timing: HereTiming | None = None,
             architecture: str | None = None) -> StudyEstimate:
    """The cost of running ``stages`` of a study of ``config`` to ``targets``; ``architecture``:
    the loaded model's (``DiffusionModel.architecture``), where the preset does not know it."""
    from autodiff_optuna.search.fidelity import rungs

    counting = time.perf_counter()
    # cached: a study pays it once, before its first trial
    cost = image_cost(config.model, architecture)
    counting = time.perf_counter() - counting
    counts = {1: targets.trials, 2: targets.stage2_trials}
    gflops_per_s = None if timing is not None else cpu_gflops_per_s()

    def row(stage: int, candidates: int) -> StageEstimate:
        counted = stage_counts(stage, candidates, config, cost,
                               rungs(config.samples, config.min_samples) if stage == 1 else [])
        counted.hours["cpu"] = here_hours(counted, cost, timing, config.steps, gflops_per_s)
        for gpu in GPUS:
            counted.hours[gpu] = gpu_hours(counted, config.model, cost, gpu)
        return counted

    rows = [row(s, counts[s]) for s in stages]
    said = assumptions(config, stages, cost, timing, gflops_per_s)
    startup = timing.startup_seconds + counting if timing is not None else 0.0
    result = StudyEstimate(name, config.steps, config.samples, rows, said, startup)
    fewest = earliest_stage2(config, targets)
    if 2 in stages and fewest < targets.stage2_trials:
        said.append(f"stage 2 at all its {targets.stage2_trials} trials: at most, since it ends "
                    f"once {targets.stage2_patience} generations in a row find nothing cheaper "
                    "within the export's tolerance (--stage2-patience)")
        shorter = StudyEstimate(name, config.steps, config.samples,
                                [r if r.stage != 2 else row(2, fewest) for r in rows], said,
                                startup)
        result.earliest = {"stage2_candidates": fewest, "total_hours": shorter.total_hours}
    return result


def earliest_stage2(config, targets) -> int:
    """The fewest stage-2 candidates a study runs before its patience can end it: its first
    ``stage2_patience`` generations, less stage 1's elites carried into the first (all
    ``stage2_elites``, where stage 1 has that many distinct complete candidates)."""
    if not targets.stage2_patience:
        return targets.stage2_trials
    carried = config.stage2_elites
    # generation 0 holds the carried elites and the first candidates; where they fill it,
    # patience counts from the first generation of candidates of stage 2's own
    first = config.population - carried
    fewest = (first + (targets.stage2_patience - 1) * config.population if first > 0
              else targets.stage2_patience * config.population)
    return min(targets.stage2_trials, fewest)


def assumptions(config, stages, cost: ImageCost, timing: HereTiming | None,
                gflops_per_s: float | None) -> list[str]:
    from autodiff_optuna.search.confirm import IMAGES_PER_SEARCH_IMAGE, STAGE1_TOP
    from autodiff_optuna.search.fidelity import STARTUP_TRIALS

    said = [f"{cost.network:.4g} GFLOP per network call, counted on the architecture"
            + (" (two calls a step: classifier-free guidance)" if cost.calls_per_step == 2
               else "")]
    if cost.classifier:
        said.append(f"{cost.classifier:.4g} GFLOP per classifier gradient (one a step)")
    if cost.decode:
        said.append(f"{cost.decode:.4g} GFLOP per VAE decode (one an image); the text "
                    "encoder is not counted")
    if config.min_samples and 1 in stages:
        said.append(f"multi-fidelity pruning: after the pruner's first {STARTUP_TRIALS} "
                    f"candidates, {complete_share(config):.0%} of stage 1's complete and the "
                    "others stop at the first rung (measured on the bundled digits models' "
                    "stage 1, in noise levels on digits-k4's: BENCHMARKS.md); a sampling and a "
                    "Frechet distance per rung reached")
    confirming = {1: f"stage 1 its {STAGE1_TOP} best and the uniform baseline",
                  2: f"stage 2 one candidate in {1 / STAGE2_CONFIRMED_SHARE:.0f} of its trials "
                     f"({STAGE2_CONFIRMED_RANGE[0]} to {STAGE2_CONFIRMED_RANGE[1]}: its best "
                     "and front)"}
    said.append("confirmation: " + ", ".join(confirming[s] for s in stages)
                + f", each on {config.samples * IMAGES_PER_SEARCH_IMAGE} images; counted in "
                "the stage's network evaluations, FID images and hours, not in its images")
    if 2 in stages:
        samplings, batch = prior_size(config, cost)
        said.append(f"stage 2 first measures its skip-cost prior: {samplings} samplings (1 + "
                    f"K x {cost.layers} skippable layers) of {batch} images; its carried "
                    "stage-1 elites are not sampled again; the rest of its creation is not "
                    "timed (a few storage writes)")
        said.append("stage 2 candidates cost the full network (their skips make them cheaper)")
    said.append("a new study (one resumed has done part of this)")
    said.append("cpu: " + (timing.how if timing is not None else
                           f"the FLOPs at {gflops_per_s:.0f} GFLOP/s, a 3x3 convolution's "
                           "speed measured on this machine (start-up and bookkeeping not "
                           "counted)"))
    measured = [m for m in MEASURED if m in (config.model, cost.fid_network)]
    said.append("h100/h200: " + (", ".join(f"{m} at its {MEASURED[m]:.0f} img/s measured on an "
                                           "H200" for m in measured) + "; "
                                 if measured else "")
                + f"other networks at {UTILISATION:.0%} of {PEAK_TFLOPS['h200']:.0f} TFLOP/s "
                "bf16; the H100 taken as fast as the H200 (same compute die); start-up and "
                "bookkeeping not counted")
    return said
