"""Sampling with a searched schedule in one call (the schedule file itself is ``export``'s).

    schedule = autodiff_optuna.load_schedule("schedule.json")
    images = autodiff_optuna.sample(schedule, n=64)          # uint8, (64, C, H, W)

A real model's files are given as the study was given them (``options``, a
``models.ModelOptions``); the weights must be the ones the schedule was searched with (its
provenance's ``model_weights``). ``load_schedule`` reads the file with ``export.read_schedule``
and checks it against its model; ``save_grid`` writes images as one PNG grid (``sample`` and
``report``).
"""

import dataclasses
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import SearchedSchedule, read_schedule, trained_steps
from autodiff_optuna.metrics.fid import to_uint8
from autodiff_optuna.models import load_model
from autodiff_optuna.models.registry import check_same_model
from autodiff_optuna.sampling import HELDOUT, draw, validate
from autodiff_optuna.sampling import sample as run_solver
from autodiff_optuna.sampling.rules import step_rules
from autodiff_optuna.sampling.skipping import check_skip

MAX_GRID = 10_000  # images in one PNG grid (sample --n, report --grid): 100 x 100
UPSCALE = 4  # save_grid's enlargement of small images
SMALL = 64  # pixels a side up to which an image is small (Stable Diffusion's 512 are not)
# a grid's memory in float32 copies of its images: the sampling's, the enlarged copy and the grid
GRID_COPIES = 3 + 2 * UPSCALE * UPSCALE


@dataclass(frozen=True)
class SampleInputs:
    """What ``sample(..., return_inputs=True)`` started from, to give a diffusers pipeline of
    one's own the same inputs (``apply`` makes it sample with the schedule)."""

    noise: torch.Tensor  # (n, C, H, W) float32: the initial noise (a latent model's latents)
    prompts: list[str] | None  # a text-to-image model's prompt per image (None: no text)
    labels: torch.Tensor | None  # a class-conditional model's class per image
    generator_seed: int  # a CPU generator so seeded draws ``noise`` first (``generator()``)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator whose first ``torch.randn`` of ``noise``'s shape is ``noise``:
        for a pipeline that takes ``generator=`` and no noise (``DDPMPipeline``)."""
        return torch.Generator().manual_seed(self.generator_seed)


def load_schedule(path, options=None, device: str = "cpu") -> SearchedSchedule:
    """Read and check an exported schedule against its model (loaded with ``options`` on
    ``device``, as ``sample`` will); a corrupt file or another model is one UsageError line."""
    path = Path(path)
    schedule = read_schedule(path)
    skip = _check(schedule, path, options, device)
    # a layer named twice at a step is skipped once, as `evaluate --skip` reads it
    return dataclasses.replace(schedule, skip=[list(names) for names in skip])


def _model(schedule: SearchedSchedule, options, device: str, what: str):
    """The schedule's model, refused when its weights are not the ones it was searched with."""
    model = load_model(schedule.model, device, options)
    check_same_model(model, schedule.provenance.get("model_weights"), what)
    return model


def _check(schedule: SearchedSchedule, path, options, device: str) -> list[tuple[str, ...]]:
    """Refuse what the schedule's model cannot run; its masks, each layer once, in model order."""
    try:
        step_rules(schedule.solver, len(schedule.timesteps))
    except UsageError as err:
        raise UsageError(f"schedule {path}: {err}") from None
    model = _model(schedule, options, device, f"schedule {path}")
    trained = trained_steps(schedule)
    if trained is not None and trained != model.num_train_timesteps:
        raise UsageError(f"schedule {path} is for a model of {trained} training steps, "
                         f"{schedule.model} has {model.num_train_timesteps}")
    validate(schedule.timesteps, model.num_train_timesteps)
    if list(schedule.timesteps) != sorted(schedule.timesteps, reverse=True):
        raise UsageError(f"schedule {path}: time steps must be descending")
    return check_skip(schedule.skip, len(schedule.timesteps), model.skippable_layers())


def sample(schedule: SearchedSchedule, n: int = 64, seed: int = 0, device: str = "cpu",
           batch_size: int | None = None, options=None, return_inputs: bool = False):
    """``n`` images (uint8, (n, C, H, W)) from the schedule's model, time steps and masks (a
    ``SearchedSchedule``, or an exported file's path, read as ``load_schedule`` reads it, as
    ``apply`` takes either); ``options`` (a ``models.ModelOptions``) locate a real model's
    files. With
    ``return_inputs``: ``(images, SampleInputs)``, the noise and prompts they were sampled
    from, which a pipeline of one's own given the schedule (``apply``) turns into the same
    images: ``pipe(prompt=inputs.prompts, latents=inputs.noise, ...)`` (Stable Diffusion),
    ``pipe(batch_size=n, generator=inputs.generator(), ...)`` (``DDPMPipeline``)."""
    if isinstance(schedule, (str, os.PathLike)):
        schedule = load_schedule(schedule, options, device)
    study = schedule.provenance.get("study")
    what = f"the schedule from study {study!r}" if study else "the schedule"
    model = _model(schedule, options, device, what)
    batch = draw(model, n, seed, HELDOUT)
    x = run_solver(model, tuple(schedule.timesteps), batch, schedule.solver, batch_size,
                   skip=[tuple(s) for s in schedule.skip])
    if not return_inputs:
        return to_uint8(x)
    return to_uint8(x), _inputs(model, batch, seed)


def _inputs(model, batch, seed: int) -> SampleInputs:
    prompts = getattr(model, "prompts", None)
    labels = batch.labels
    return SampleInputs(
        noise=batch.noise.clone(),
        prompts=None if prompts is None else [prompts[i] for i in labels.tolist()],
        labels=None if prompts is not None or labels is None else labels.clone(),
        # sampling.noise.draw's generator for held-out noise (tests check it draws ``noise``)
        generator_seed=2 * seed + 1)


def save_grid(images: torch.Tensor, path, upscale: int = UPSCALE) -> None:
    """A PNG grid; small images (up to ``SMALL`` pixels a side) are enlarged (nearest
    neighbour) so the grid can be seen."""
    from torchvision.utils import save_image

    x = images.float() / 255.0
    if upscale > 1 and max(x.shape[-2:]) <= SMALL:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    made = _missing_folders(Path(path).parent)
    for folder in made:
        folder.mkdir()
    try:
        save_image(x, str(path), nrow=int(max(1, round(len(x) ** 0.5))), padding=2,
                   pad_value=1.0)
    except BaseException:  # a refused grid (say, an unknown image format) leaves no folder
        for folder in reversed(made):
            with suppress(OSError):
                folder.rmdir()
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """The folders that must be made for ``folder`` to exist, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]
