"""A searched schedule as a file: ``SearchedSchedule`` and its JSON layout, what ``export``
writes (``from_result``), and the one reader of the files (``read_schedule``).

The file also holds what a diffusers user pastes (``diffusers``): the time steps for a
pipeline's ``timesteps=``, the scheduler class and config that sample them as the search did
(``sampling.solvers.solver_config``: what ``pipelines.apply`` builds), the model's number of
training steps, and a text-to-image model's guidance scale; a model searched with its x0
prediction clipped to [-1, 1] has the solver clip it (``thresholding`` with a
``sample_max_value`` of 1). Layer skips need ``apply``.

``identity`` records which model the schedule is for (``models.identity``: its network's class
and config, its training schedule, whether it is text-to-image, its weights), so that ``apply``
refuses another model's pipeline. ``read_schedule`` is the one reader of schedule files
(``load_schedule``, ``apply`` and the CLI's ``sample --schedule`` go through it); a field of the
wrong type is refused when a ``SearchedSchedule`` is made, from a file or by hand.

Importing this module loads no torch, nor does reading a file (``read_schedule``) or writing
one (``to_json``); making the ``diffusers`` fields does (diffusers' own scheduler makes their
config), so ``export`` loads torch for a study that recorded its model's training schedule
(``from_result``). Sampling with a schedule (``load_schedule``, ``sample``, ``save_grid``) is
``schedule_sampling``'s.
"""

import datetime
import json
from dataclasses import asdict, dataclass, field

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.files import read_json
from autodiff_optuna.sampling.rules import (
    describe,
    fixed_solver,
    single_scheduler_solver,
)
from autodiff_optuna.search.results import Point, StudyResult, study_solver
from autodiff_optuna.storage import record
from autodiff_optuna.storage.record import FID_FEATURES_ATTR, IDENTITY_ATTR

FORMAT = "autodiff-optuna-schedule/1"


@dataclass(frozen=True)
class SearchedSchedule:
    model: str
    # a fixed solver's name, or one [order, corrector(, method(, scale))] rule per step
    solver: str | list
    timesteps: list[int]
    skip: list[list[str]]  # per step, the layers skipped there (empty lists: full network)
    fid: float | None = None
    gflops: float | None = None
    full_gflops: float | None = None
    provenance: dict = field(default_factory=dict)
    diffusers: dict | None = None  # for a diffusers pipeline (None: a file from before them)
    identity: dict | None = None  # models.identity of its model (None: not recorded)

    def __post_init__(self):
        problem = _type_problem(self)
        if problem:
            raise ValueError(problem)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1) + "\n"


def from_result(result: StudyResult, pick: Point | None = None) -> SearchedSchedule:
    """The schedule ``export`` writes: ``pick``, else ``result.choose()`` (by the result's
    export rule: the cheapest front point within its FID tolerance of the best, or the
    lowest-FID one within its budget; refused when it is worse than the uniform schedule)."""
    if pick is None:
        pick = result.choose()
    config = result.config
    training_schedule = record.training_schedule(result.stage1.user_attrs)
    # searched per step, or scaled: its name where one fixed solver runs the same rules
    solver = study_solver(config, pick.rules)
    if not isinstance(solver, str):
        solver = fixed_solver(solver, len(pick.timesteps)) or solver
    return SearchedSchedule(
        model=config["model"], solver=solver, timesteps=pick.timesteps,
        skip=pick.skip, fid=pick.fid, gflops=pick.gflops, full_gflops=result.full_gflops,
        provenance={"study": pick.study, "trial": pick.trial, "stage": pick.stage,
                    "samples": config["samples"], "seed": config["seed"],
                    "model_weights": config.get("model_weights"),
                    "fid_features": result.stage1.user_attrs.get(FID_FEATURES_ATTR),
                    "uniform_fid": None if result.uniform is None else result.uniform.fid,
                    "best": {"stage": result.best.stage, "trial": result.best.trial,
                             "fid": result.best.fid},
                    "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        diffusers=None if training_schedule is None else diffusers_fields(
            training_schedule, solver, pick.timesteps, config.get("model_weights"),
            clip=clips(config["model"], training_schedule)),
        identity=_recorded_identity(result))


def _recorded_identity(result: StudyResult) -> dict | None:
    identity = result.stage1.user_attrs.get(IDENTITY_ATTR)
    return identity if isinstance(identity, dict) else None


def clips(model: str, scheduler_config: dict) -> bool:
    """Whether preset ``model`` is sampled with its x0 prediction clipped to [-1, 1]: as the
    preset says, or (``--model diffusers``) where ``scheduler_config`` says ``clip_sample``,
    as the adapter decides it."""
    from autodiff_optuna.models.registry import PRESETS  # imports the adapters, and torch

    preset = PRESETS.get(model)
    if preset is None:
        return False
    if preset.clip_denoised is None:
        return bool(scheduler_config.get("clip_sample", False))
    return preset.clip_denoised


def diffusers_fields(training_schedule: dict, solver, timesteps, model_weights=None,
                     clip: bool = False) -> dict:
    """What a diffusers pipeline needs to sample ``timesteps`` as the search did:
    ``pipe.scheduler = <scheduler>.from_config(scheduler_config)``, then ``pipe(...,
    timesteps=timesteps)`` (and ``guidance_scale=`` for a text-to-image model). ``clip``: the
    model was searched with its x0 prediction clipped to [-1, 1], which the solver's dynamic
    thresholding does when its threshold can be no other than 1. Per-step rules that no single
    scheduler runs (mixed orders, UniPC's corrector), and iPNDM, get a ``note`` saying so
    instead."""
    # torch: diffusers' scheduler makes the config, and the registry imports the adapters
    from autodiff_optuna.models.registry import guidance_of
    from autodiff_optuna.sampling.solvers import scheduler_solver, solver_config

    fields = {"timesteps": list(timesteps),
              "num_train_timesteps": int(training_schedule["num_train_timesteps"])}
    single = single_scheduler_solver(solver, len(timesteps))
    if single is None and scheduler_solver(solver, len(timesteps)) is not None:
        # iPNDM with the analytical first step, a scaled noise prediction: ours
        fields["note"] = (f"no diffusers scheduler runs this solver "
                          f"({describe(solver, len(timesteps))}): apply it to a pipeline with "
                          "autodiff_optuna.apply(pipe, schedule), or sample with "
                          "autodiff_optuna.sample(schedule)")
    elif single is None:
        fields["note"] = (f"no single diffusers scheduler runs this solver "
                          f"({describe(solver, len(timesteps))}): sample with "
                          "autodiff_optuna.sample(schedule), which runs diffusers' own "
                          "updates step by step")
    else:
        fields.update(solver_config(training_schedule, single))
    if clip and single is not None:
        fields["scheduler_config"].update(thresholding=True, sample_max_value=1.0)
    scale = guidance_of(model_weights)
    if scale is not None:
        fields["guidance_scale"] = scale
    return fields


def read_schedule(path) -> SearchedSchedule:
    """An exported schedule file, its fields checked (not yet against any model); a file that
    is not one, or whose fields have the wrong types, is one UsageError line."""
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise UsageError(f"{path} is not an autodiff-optuna schedule (format {FORMAT!r})")
    data.pop("format")
    try:
        return SearchedSchedule(**data)
    except (TypeError, ValueError) as err:  # a missing or unknown field; a wrong type
        raise UsageError(f"schedule {path} is malformed: {err}") from None


# the types of the fields, as ``from_result`` writes them (optional ones: None when not recorded)
NUMBER = (int, float)
NUMBER_FIELDS = ("fid", "gflops", "full_gflops")
PROVENANCE_TYPES = {"study": str, "trial": int, "stage": int, "samples": int, "seed": int,
                    "model_weights": str, "fid_features": str, "uniform_fid": NUMBER,
                    "best": dict, "exported_at": str}
DIFFUSERS_TYPES = {"timesteps": list, "scheduler": str, "scheduler_config": dict,
                   "num_train_timesteps": int, "guidance_scale": NUMBER, "note": str}
IDENTITY_TYPES = {"unet": str, "unet_config": str, "unet_weights": str,
                  "training_schedule": str, "text_to_image": bool}
KIND_NAMES = {str: "a string", int: "an integer", NUMBER: "a number", dict: "an object",
              list: "a list", bool: "true or false"}


def _is_a(value, kind) -> bool:
    """``value`` is of ``kind`` (a bool is no number; a tuple, made by hand, is a list)."""
    if kind is list:
        return isinstance(value, (list, tuple))
    if kind is bool:
        return isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _int_list(value) -> bool:
    return _is_a(value, list) and all(_is_a(t, int) for t in value)


def _type_problem(schedule: SearchedSchedule) -> str | None:
    """What is of the wrong type in ``schedule`` (None: nothing): refused where the schedule is
    made, in one line, rather than failing wherever the field is first used."""
    if not _is_a(schedule.model, str):
        return f"'model' must be a string, got {schedule.model!r}"
    if not (_is_a(schedule.solver, str) or _is_a(schedule.solver, list) and all(
            _is_a(rule, list) and len(rule) in (2, 3, 4) and _is_a(rule[0], int)
            and _is_a(rule[1], bool) and all(_is_a(method, str) for method in rule[2:3])
            and all(_is_a(scale, NUMBER) for scale in rule[3:])
            for rule in schedule.solver)):
        return ("'solver' must be a solver's name or a list of [order, corrector] (or [order, "
                f"corrector, method] or [order, corrector, method, scale]) rules, got "
                f"{schedule.solver!r}")
    if not _int_list(schedule.timesteps):
        return f"'timesteps' must be a list of integers, got {schedule.timesteps!r}"
    if not (_is_a(schedule.skip, list) and all(
            _is_a(step, list) and all(_is_a(name, str) for name in step)
            for step in schedule.skip)):
        return f"'skip' must be a list of lists of layer names, got {schedule.skip!r}"
    for key in NUMBER_FIELDS:
        value = getattr(schedule, key)
        if value is not None and not _is_a(value, NUMBER):
            return f"{key!r} must be a number, got {value!r}"
    if not _is_a(schedule.provenance, dict):
        return f"'provenance' must be an object, got {schedule.provenance!r}"
    for name, fields, types in (("provenance", schedule.provenance, PROVENANCE_TYPES),
                                ("diffusers", schedule.diffusers, DIFFUSERS_TYPES),
                                ("identity", schedule.identity, IDENTITY_TYPES)):
        problem = _object_problem(name, fields, types)
        if problem:
            return problem
    if schedule.diffusers is not None and "timesteps" in schedule.diffusers:
        if not _int_list(schedule.diffusers["timesteps"]):
            return "'diffusers' 'timesteps' must be a list of integers"
        # export writes the same steps to both: a difference is an edit, and which of the two
        # the user meant cannot be known
        if schedule.diffusers["timesteps"] != list(schedule.timesteps):
            return (f"'diffusers' 'timesteps' {schedule.diffusers['timesteps']} differ from "
                    f"'timesteps' {list(schedule.timesteps)}: make them the same")
    return None


def _object_problem(name: str, fields, types: dict) -> str | None:
    """What is wrong with the object ``name`` (None: it is absent, or its known keys have
    their types; an absent key or a null value is not recorded)."""
    if fields is None:
        return None
    if not _is_a(fields, dict):
        return f"{name!r} must be an object, got {fields!r}"
    for key, kind in types.items():
        value = fields.get(key)
        if value is not None and not _is_a(value, kind):
            return f"{name} {key!r} must be {KIND_NAMES[kind]}, got {value!r}"
    return None


def trained_steps(schedule: SearchedSchedule):
    """The number of training steps of the schedule's model, where the file records it."""
    fields = schedule.diffusers
    return fields.get("num_train_timesteps") if isinstance(fields, dict) else None

