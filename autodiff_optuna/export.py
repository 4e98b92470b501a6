"""A searched schedule as a file, and sampling with it in one call.

    schedule = autodiff_optuna.load_schedule("schedule.json")
    images = autodiff_optuna.sample(schedule, n=64)          # uint8, (64, C, H, W)

A real model's files are given as the study was given them (``options``, a
``models.ModelOptions``); the weights must be the ones the schedule was searched with (its
provenance's ``model_weights``).

The file also holds what a diffusers user pastes (``diffusers``): the time steps for a
pipeline's ``timesteps=``, the scheduler class and config that sample them as the search did
(``sampling.solvers.solver_config``: what ``pipelines.apply`` builds), the model's number of
training steps, and a text-to-image model's guidance scale. Layer skips need ``apply``.
"""

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import to_uint8
from autodiff_optuna.models import load_model
from autodiff_optuna.models.files import read_json
from autodiff_optuna.models.registry import check_same_model, guidance_of
from autodiff_optuna.sampling import HELDOUT, SOLVER_ORDERS, draw, validate
from autodiff_optuna.sampling import sample as run_solver
from autodiff_optuna.sampling.skipping import check_skip
from autodiff_optuna.sampling.solvers import solver_config
from autodiff_optuna.search import results
from autodiff_optuna.search.results import StudyResult

FORMAT = "autodiff-optuna-schedule/1"
MAX_GRID = 10_000  # images in one PNG grid (sample --n, report --grid): 100 x 100
UPSCALE = 4  # save_grid's enlargement of small images
SMALL = 64  # pixels a side up to which an image is small (Stable Diffusion's 512 are not)
# a grid's memory in float32 copies of its images: the sampling's, the enlarged copy and the grid
GRID_COPIES = 3 + 2 * UPSCALE * UPSCALE


@dataclass(frozen=True)
class SearchedSchedule:
    model: str
    solver: str
    timesteps: list[int]
    skip: list[list[str]]  # per step, the layers skipped there (empty lists: full network)
    fid: float | None = None
    gflops: float | None = None
    full_gflops: float | None = None
    provenance: dict = field(default_factory=dict)
    diffusers: dict | None = None  # for a diffusers pipeline (None: a file from before them)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1) + "\n"


def from_result(result: StudyResult, max_gflops: float | None = None) -> SearchedSchedule:
    """The schedule ``export`` writes: the result's ``fast`` point (the cheapest within its FID
    tolerance of the best), or with ``max_gflops`` the lowest-FID one within that budget
    (``StudyResult.choose``: refused when it is worse than the uniform schedule)."""
    pick = result.choose(max_gflops)
    config = result.config
    training_schedule = results.training_schedule(result.stage1)
    return SearchedSchedule(
        model=config["model"], solver=config["solver"], timesteps=pick.timesteps,
        skip=pick.skip, fid=pick.fid, gflops=pick.gflops, full_gflops=result.full_gflops,
        provenance={"study": pick.study, "trial": pick.trial, "stage": pick.stage,
                    "samples": config["samples"], "seed": config["seed"],
                    "model_weights": config.get("model_weights"),
                    "fid_features": result.stage1.user_attrs.get("fid_features"),
                    "uniform_fid": None if result.uniform is None else result.uniform.fid,
                    "best": {"stage": result.best.stage, "trial": result.best.trial,
                             "fid": result.best.fid},
                    "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        diffusers=None if training_schedule is None else diffusers_fields(
            training_schedule, config["solver"], pick.timesteps, config.get("model_weights")))


def diffusers_fields(training_schedule: dict, solver: str, timesteps, model_weights=None
                     ) -> dict:
    """What a diffusers pipeline needs to sample ``timesteps`` as the search did:
    ``pipe.scheduler = <scheduler>.from_config(scheduler_config)``, then ``pipe(...,
    timesteps=timesteps)`` (and ``guidance_scale=`` for a text-to-image model)."""
    fields = {"timesteps": list(timesteps), **solver_config(training_schedule, solver),
              "num_train_timesteps": int(training_schedule["num_train_timesteps"])}
    scale = guidance_of(model_weights)
    if scale is not None:
        fields["guidance_scale"] = scale
    return fields


def load_schedule(path, options=None, device: str = "cpu") -> SearchedSchedule:
    """Read and check an exported schedule against its model (loaded with ``options`` on
    ``device``, as ``sample`` will); a corrupt file or another model is one UsageError line."""
    path = Path(path)
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise UsageError(f"{path} is not an autodiff-optuna schedule (format {FORMAT!r})")
    data.pop("format")
    try:
        schedule = SearchedSchedule(**data)
    except TypeError as err:
        raise UsageError(f"schedule {path} is malformed: {err}") from None
    if not isinstance(schedule.model, str) or not isinstance(schedule.solver, str) \
            or not isinstance(schedule.timesteps, list) \
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in schedule.timesteps):
        raise UsageError(f"schedule {path} is malformed: 'model' and 'solver' must be strings, "
                         "'timesteps' a list of integers")
    if not isinstance(schedule.provenance, dict):
        raise UsageError(f"schedule {path} is malformed: 'provenance' must be an object")
    _check_field_types(schedule, path)
    _check(schedule, path, options, device)
    return schedule


# the types of the optional fields, as ``from_result`` writes them (None: not recorded)
NUMBER_FIELDS = ("fid", "gflops", "full_gflops")
PROVENANCE_TYPES = {"study": str, "trial": int, "stage": int, "samples": int, "seed": int,
                    "model_weights": str, "fid_features": str, "exported_at": str}


def _check_field_types(schedule: SearchedSchedule, path) -> None:
    """A field of the wrong type (``"fid": "1.5"``, a number as ``model_weights``) is refused
    here, in one line, rather than failing wherever it is first used."""
    def is_a(value, kind) -> bool:
        return value is None or (isinstance(value, kind) and not isinstance(value, bool))

    for key in NUMBER_FIELDS:
        if not is_a(getattr(schedule, key), (int, float)):
            raise UsageError(f"schedule {path} is malformed: {key!r} must be a number, got "
                             f"{getattr(schedule, key)!r}")
    for key, kind in PROVENANCE_TYPES.items():
        if not is_a(schedule.provenance.get(key), kind):
            raise UsageError(f"schedule {path} is malformed: provenance {key!r} must be "
                             f"{'a string' if kind is str else 'an integer'}, got "
                             f"{schedule.provenance[key]!r}")
    if not is_a(schedule.diffusers, dict) or not is_a(trained_steps(schedule), int):
        raise UsageError(f"schedule {path} is malformed: 'diffusers' must be an object whose "
                         "'num_train_timesteps' is an integer")


def trained_steps(schedule: SearchedSchedule):
    """The number of training steps of the schedule's model, where the file records it."""
    fields = schedule.diffusers
    return fields.get("num_train_timesteps") if isinstance(fields, dict) else None


def _model(schedule: SearchedSchedule, options, device: str, what: str):
    """The schedule's model, refused when its weights are not the ones it was searched with."""
    model = load_model(schedule.model, device, options)
    check_same_model(model, schedule.provenance.get("model_weights"), what)
    return model


def _check(schedule: SearchedSchedule, path, options, device: str) -> None:
    if schedule.solver not in SOLVER_ORDERS:
        raise UsageError(f"schedule {path}: unknown solver {schedule.solver!r}")
    model = _model(schedule, options, device, f"schedule {path}")
    trained = trained_steps(schedule)
    if trained is not None and trained != model.num_train_timesteps:
        raise UsageError(f"schedule {path} is for a model of {trained} training steps, "
                         f"{schedule.model} has {model.num_train_timesteps}")
    validate(schedule.timesteps, model.num_train_timesteps)
    if list(schedule.timesteps) != sorted(schedule.timesteps, reverse=True):
        raise UsageError(f"schedule {path}: time steps must be descending")
    check_skip(schedule.skip, len(schedule.timesteps), model.skippable_layers())


def sample(schedule: SearchedSchedule, n: int = 64, seed: int = 0, device: str = "cpu",
           batch_size: int | None = None, options=None) -> torch.Tensor:
    """``n`` images (uint8, (n, C, H, W)) from the schedule's model, time steps and masks;
    ``options`` (a ``models.ModelOptions``) locate a real model's files."""
    study = schedule.provenance.get("study")
    what = f"the schedule from study {study!r}" if study else "the schedule"
    model = _model(schedule, options, device, what)
    batch = draw(model, n, seed, HELDOUT)
    x = run_solver(model, tuple(schedule.timesteps), batch, schedule.solver, batch_size,
                   skip=[tuple(s) for s in schedule.skip])
    return to_uint8(x)


def save_grid(images: torch.Tensor, path, upscale: int = UPSCALE) -> None:
    """A PNG grid; small images (up to ``SMALL`` pixels a side) are enlarged (nearest
    neighbour) so the grid can be seen."""
    from torchvision.utils import save_image

    x = images.float() / 255.0
    if upscale > 1 and max(x.shape[-2:]) <= SMALL:
        x = torch.nn.functional.interpolate(x, scale_factor=upscale, mode="nearest")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(x, str(path), nrow=int(max(1, round(len(x) ** 0.5))), padding=2, pad_value=1.0)
