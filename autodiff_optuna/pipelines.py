"""A searched schedule in a diffusers pipeline of one's own: ``apply(pipe, schedule)``.

    with autodiff_optuna.apply(pipe, "schedule.json"):
        images = pipe(batch_size=16).images      # the schedule's steps, solver and skips
    # pipe is as it was

Inside the block the pipeline samples as the search scored the schedule:

- its scheduler is the schedule's solver, made from the pipeline scheduler's own config by the
  very function the search samples with (``sampling.solvers.make_scheduler``: DPM-Solver++ of
  order 1, which is DDIM with eta 0, or order 2; on the config's training noise schedule alone,
  ``rules.training_schedule``), and pinned to the schedule's time steps whatever number of
  steps the pipeline asks for;
- the schedule's layer skips are active at their steps (the bypasses sampling uses, swapped in
  around each UNet call by forward hooks);
- a model searched with its x0 prediction clipped to [-1, 1] (google's DDPMs) is clipped alike.

The schedule must be the pipeline's model's: a UNet of another class or config, another training
schedule (betas), or text-to-image where the model was not (or the reverse) is refused, as the
schedule's ``identity`` records them (a bundled model's, from its files); a UNet of the same
network with other weights (a fine-tune) is warned about. A schedule that records no identity
(exported before identities were) applies with a warning that it cannot be checked.

A ``StableDiffusionPipeline`` samples with the schedule's guidance when it is called with the
schedule's ``guidance_scale`` (the exported file's ``diffusers`` fields hold it): the pipeline
runs classifier-free guidance in one UNet call per step, as the search did. A call with another
guidance scale is warned about.

A plain call changes the pipeline in place and returns it wrapped (calls and attributes go to
the pipeline; ``.restore()`` undoes the change); ``with`` restores it on leaving the block.
"""

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.export import SearchedSchedule, clips, read_schedule, trained_steps
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel, bypass_for
from autodiff_optuna.models.identity import NETWORK_PARTS, bundled_identity, identity
from autodiff_optuna.models.layers import find_skippable_layers
from autodiff_optuna.models.registry import PRESETS, guidance_of
from autodiff_optuna.models.stable_diffusion import StableDiffusionModel, sd_bypass_for
from autodiff_optuna.sampling import validate
from autodiff_optuna.sampling.rules import common_scale, describe, step_rules
from autodiff_optuna.sampling.skipping import check_skip, skipping
from autodiff_optuna.sampling.solvers import make_scheduler, scheduler_solver

MARK = "_autodiff_optuna_schedule"  # on a scheduler apply made: the schedule it runs


@dataclass(frozen=True)
class PipelineParts:
    """Where a pipeline type keeps what ``apply`` changes, and its UNet's skippable layers (by
    the names a schedule's masks use)."""

    layers: Callable[[torch.nn.Module], dict]
    unet: str = "unet"
    scheduler: str = "scheduler"


def _unet2d_layers(unet: torch.nn.Module) -> dict:
    """A ``UNet2DModel``'s ResBlocks and attention layers, as the diffusers adapter finds them."""
    return find_skippable_layers(unet, DiffusersUNetModel.SKIPPABLE_PREFIXES, bypass_for)


def _unet2d_condition_layers(unet: torch.nn.Module) -> dict:
    """A ``UNet2DConditionModel``'s ResBlocks and transformer blocks, as the Stable Diffusion
    adapter finds them."""
    return find_skippable_layers(unet, StableDiffusionModel.SKIPPABLE_PREFIXES, sd_bypass_for)


# Pipeline class name (or a base class's) -> its parts
PIPELINES: dict[str, PipelineParts] = {
    "DDPMPipeline": PipelineParts(layers=_unet2d_layers),
    "DDIMPipeline": PipelineParts(layers=_unet2d_layers),
    "StableDiffusionPipeline": PipelineParts(layers=_unet2d_condition_layers),
}


class Applied:
    """A pipeline with a schedule applied. Calls and attributes go to the pipeline;
    ``restore()``, or leaving a ``with`` block, puts its scheduler back and removes the hooks."""

    def __init__(self, pipeline, parts: PipelineParts, original_scheduler, hooks: list):
        self.pipeline = pipeline
        self._parts = parts
        self._original_scheduler = original_scheduler
        self._hooks = hooks

    def restore(self):
        """Undo ``apply`` (once; later calls do nothing). Returns the pipeline."""
        if self._hooks is not None:
            setattr(self.pipeline, self._parts.scheduler, self._original_scheduler)
            for hook in self._hooks:
                hook.remove()
            self._hooks = None
        return self.pipeline

    def __enter__(self):
        return self.pipeline

    def __exit__(self, *exc) -> None:
        self.restore()

    def __call__(self, *args, **kwargs):
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name):  # only for what Applied itself lacks
        if name == "pipeline":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.pipeline, name)


def apply(pipe, schedule) -> Applied:
    """Make ``pipe`` (a diffusers pipeline of a type in ``PIPELINES``) sample with ``schedule``
    (a ``SearchedSchedule`` or the path of an exported schedule file). ``pipe`` is changed in
    place; use the result as a context manager to have it restored. One ``ValueError`` line if
    the pipeline type is unknown, or the schedule is for another model (other training steps,
    another UNet or training schedule, layers its UNet lacks) or malformed; a warning where
    the UNet's weights are not the schedule's, or its model's identity is not recorded."""
    parts = _parts(pipe)
    schedule = _read(schedule)
    unet = getattr(pipe, parts.unet)
    current = getattr(pipe, parts.scheduler)
    if getattr(current, MARK, None) is not None:
        raise ValueError("a schedule is already applied to this pipeline: restore it first")
    config = dict(current.config)
    layers = parts.layers(unet)
    try:
        skip = _check(schedule, config, layers)
        doubts = _check_identity(schedule, unet, config)
    except UsageError as err:
        raise ValueError(f"cannot apply the schedule for model {schedule.model!r} to this "
                         f"{type(pipe).__name__}: {err}") from None
    for doubt in doubts:
        warnings.warn(f"the schedule for model {schedule.model!r} on this "
                      f"{type(pipe).__name__}: {doubt}", UserWarning, stacklevel=2)
    # made before any hook goes on the UNet: nothing of the pipeline changes where it fails
    solver = _solver(config, schedule, _guidance_check(pipe, schedule))
    hooks = []
    if any(skip):
        hooks += _skip_hooks(unet, layers, dict(zip(schedule.timesteps, skip)))
    if clips(schedule.model, config):
        hooks.append(_clip_hook(unet, config))
    if hasattr(solver, "first_input"):  # ipndm: its first evaluation sees the moved noise
        hooks.append(_first_input_hook(unet, solver))
    setattr(pipe, parts.scheduler, solver)
    return Applied(pipe, parts, current, hooks)


def _parts(pipe) -> PipelineParts:
    for cls in type(pipe).__mro__:
        if cls.__name__ in PIPELINES:
            return PIPELINES[cls.__name__]
    raise ValueError(f"apply does not know {type(pipe).__name__} pipelines; it knows "
                     f"{', '.join(PIPELINES)}")


def _read(schedule) -> SearchedSchedule:
    """The schedule itself, or read from its file (checked against the pipeline, not against
    the model files ``load_schedule`` would load)."""
    if isinstance(schedule, SearchedSchedule):
        return schedule
    if not isinstance(schedule, (str, os.PathLike)):
        raise TypeError("schedule must be a SearchedSchedule or the path of a schedule file")
    try:
        return read_schedule(schedule)
    except UsageError as err:
        raise ValueError(str(err)) from None


def _check(schedule: SearchedSchedule, config: dict, layers: dict) -> list[tuple[str, ...]]:
    """The schedule's masks (in layer order), once it is known to fit the pipeline; else a
    UsageError saying what does not fit."""
    steps = int(config["num_train_timesteps"])
    trained = _trained_steps(schedule)
    if trained is not None and trained != steps:
        raise UsageError(f"that model has {trained} training steps, this pipeline's "
                         f"scheduler {steps}")
    step_rules(schedule.solver, len(schedule.timesteps))  # an unknown solver: one line
    if scheduler_solver(schedule.solver, len(schedule.timesteps)) is None:
        raise UsageError(f"its solver ({describe(schedule.solver, len(schedule.timesteps))}) "
                         "is run by no single diffusers scheduler: sample it with "
                         "autodiff_optuna.sample(schedule)")
    validate(schedule.timesteps, steps)
    if list(schedule.timesteps) != sorted(schedule.timesteps, reverse=True):
        raise UsageError("time steps must be descending")
    return check_skip(schedule.skip, len(schedule.timesteps), layers)


def _trained_steps(schedule: SearchedSchedule) -> int | None:
    """T of the schedule's model where it is known without its weights: as the exported file
    records it, else a bundled model's scheduler config or an ADM preset's flags (None for
    other models: the range check has to do)."""
    if trained_steps(schedule) is not None:
        return trained_steps(schedule)
    preset = PRESETS.get(schedule.model)
    if preset is None:
        return None
    if preset.directory is not None:
        config = preset.directory / "scheduler" / "scheduler_config.json"
        return int(json.loads(config.read_text())["num_train_timesteps"])
    return preset.diffusion.get("diffusion_steps")


def _check_identity(schedule: SearchedSchedule, unet, config: dict) -> list[str]:
    """A UsageError naming each part of the schedule's model that this pipeline's UNet and
    scheduler config are not (``models.identity``); else what could not be checked, or
    differs without making it another model (the weights), for warnings."""
    recorded = schedule.identity or _known_identity(schedule.model)
    here = identity(unet, config)
    differences = [_difference(part, recorded[part], here[part]) for part in NETWORK_PARTS
                   if recorded.get(part) is not None and recorded[part] != here[part]]
    if differences:
        raise UsageError("; ".join(differences))
    doubts = []
    if not all(recorded.get(part) is not None for part in NETWORK_PARTS):
        doubts.append("the schedule does not record its model's identity (exported before "
                      "identities were): whether this pipeline's UNet and training schedule "
                      "are its model's cannot be checked")
    elif recorded.get("unet_weights") not in (None, here["unet_weights"]):
        doubts.append(f"this UNet's weights (digest {here['unet_weights']}) are not the ones "
                      f"it was searched with ({recorded['unet_weights']}): the same network "
                      "fine-tuned (or in another precision) may sample worse with it")
    return doubts


def _known_identity(model: str) -> dict:
    """What is known of a preset's identity without a recorded one: a bundled model's whole
    identity (its files are here), else whether it is text-to-image."""
    preset = PRESETS.get(model)
    if preset is None:
        return {}
    if preset.directory is not None:
        return bundled_identity(preset.directory)
    return {"text_to_image": preset.prompts is not None}


def _difference(part: str, recorded, here) -> str:
    """One part of the identity that differs, in words."""
    if part == "text_to_image":
        kinds = {True: "text-to-image", False: "not text-to-image"}
        return f"its model is {kinds[recorded]}, this pipeline's UNet is {kinds[here]}"
    if part == "unet":
        return f"its model's UNet is a {recorded}, this pipeline's a {here}"
    if part == "unet_config":
        return f"its UNet's config (digest {recorded}) is not this UNet's ({here})"
    return (f"its training schedule (betas digest {recorded}) is not this pipeline "
            f"scheduler's ({here})")


def _guidance_check(pipe, schedule: SearchedSchedule) -> Callable[[], None] | None:
    """For a pipeline with classifier-free guidance (it has ``guidance_scale``): a check, run
    as each call sets its time steps, that warns of a call whose guidance scale is not the
    schedule's (the scale is part of what the search sampled)."""
    fields = schedule.diffusers or {}
    scale = fields.get("guidance_scale")
    if scale is None:
        scale = guidance_of(schedule.provenance.get("model_weights"))
    if scale is None or not hasattr(type(pipe), "guidance_scale"):
        return None

    def check() -> None:
        used = getattr(pipe, "guidance_scale", None)  # set by the call before its time steps
        if used is not None and float(used) != float(scale):
            warnings.warn(f"this {type(pipe).__name__} call's guidance_scale {used:g} is not "
                          f"the schedule's: it was searched with guidance_scale={scale:g}",
                          UserWarning, stacklevel=4)

    return check


def _solver(config: dict, schedule: SearchedSchedule, on_call: Callable[[], None] | None = None):
    """The schedule's solver from the pipeline scheduler's config, by sampling's own
    constructor (it reads only these two attributes of a model), pinned to the schedule;
    ``on_call`` runs as a pipeline call sets its time steps."""
    timesteps = list(schedule.timesteps)
    scheduler = make_scheduler(SimpleNamespace(scheduler_config=config, device=None),
                               scheduler_solver(schedule.solver, len(timesteps)), timesteps)
    scale = common_scale(schedule.solver, len(timesteps))  # epsilon scaling, as sampling does
    set_timesteps, step = scheduler.set_timesteps, scheduler.step

    def pinned(num_inference_steps=None, device=None, **ignored):
        # whatever a pipeline asks for: the schedule's steps (and a fresh multistep history)
        set_timesteps(timesteps=timesteps, device=device)
        scheduler.first_evaluation_pending = True  # a sampling starts (``_first_input_hook``)
        if on_call is not None:
            on_call()

    def deterministic(model_output, timestep, sample, *args, eta=0.0,
                      use_clipped_model_output=None, **kwargs):
        # the first evaluation is over, also where this step refuses (``_first_input_hook``)
        scheduler.first_evaluation_pending = False
        # DDIMPipeline passes DDIM's arguments; the schedule was scored with eta 0
        if eta:
            raise ValueError(f"the schedule's solver is deterministic: eta must be 0, not {eta}")
        if scale != 1:
            model_output = model_output / scale
        return step(model_output, timestep, sample, *args, **kwargs)

    # instance attributes shadow the methods, on a scheduler made for this pipeline alone
    scheduler.set_timesteps, scheduler.step = pinned, deterministic
    scheduler.first_evaluation_pending = False  # until a pipeline's call sets its time steps
    setattr(scheduler, MARK, schedule)
    return scheduler


def _first_input_hook(unet: torch.nn.Module, scheduler):
    """The UNet's calls at the first time step of a sampling (after the pipeline set the time
    steps, before the first step: both of a guided pipeline's, if it makes two) see
    ``scheduler.first_input`` of their sample: the analytical first step, which a pipeline does
    not ask its scheduler for. Any other call of the UNet (another pipeline sharing it, a call
    of one's own) is left alone."""
    first = int(scheduler.timesteps[0])

    def before(module, args, kwargs):
        if not scheduler.first_evaluation_pending:
            return None
        if _timestep(args, kwargs) != first:
            # the applied sampling is past its first evaluation (one that raised) or another
            # sampling runs: nothing is pending any more
            scheduler.first_evaluation_pending = False
            return None
        if args:
            return (scheduler.first_input(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "sample": scheduler.first_input(kwargs["sample"])}

    # first: the skip hooks see what the UNet sees
    return unet.register_forward_pre_hook(before, with_kwargs=True, prepend=True)


def _timestep(args, kwargs) -> int | None:
    t = args[1] if len(args) > 1 else kwargs.get("timestep")
    if t is None:
        return None
    return int(t.reshape(-1)[0]) if torch.is_tensor(t) else int(t)


def _skip_hooks(unet: torch.nn.Module, layers: dict, masks: dict[int, tuple[str, ...]]
                ) -> list:
    """Around each UNet call, the layers the mask of its time step names are bypassed."""
    active: list[contextlib.ExitStack] = []

    def before(module, args, kwargs):
        stack = contextlib.ExitStack()
        stack.enter_context(skipping(layers, masks.get(_timestep(args, kwargs), ())))
        active.append(stack)

    def after(module, args, output):
        if active:  # called even when the forward raised
            active.pop().close()

    return [unet.register_forward_pre_hook(before, with_kwargs=True),
            unet.register_forward_hook(after, always_call=True)]


def _clip_hook(unet: torch.nn.Module, config: dict):
    """The UNet's epsilon re-derived from its clipped x0 prediction, as the search's model
    adapter computes it (``DiffusionModel._clip_eps``: float64 coefficients, same order)."""
    import numpy as np
    from diffusers import DDPMScheduler

    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    else:
        betas = DDPMScheduler.from_config(config).betas.double().numpy()
    alphas_cumprod = np.cumprod(1.0 - betas)
    recip = torch.from_numpy(np.sqrt(1.0 / alphas_cumprod))
    recipm1 = torch.from_numpy(np.sqrt(1.0 / alphas_cumprod - 1))

    def after(module, args, kwargs, output):
        x, t = args[0], _timestep(args, kwargs)
        eps = output[0] if isinstance(output, tuple) else output.sample
        a, b = recip[t].to(x.device).float(), recipm1[t].to(x.device).float()
        x0 = (a * x - b * eps.float()).clamp(-1, 1)
        eps = ((a * x - x0) / b).to(eps.dtype)
        if isinstance(output, tuple):
            return (eps, *output[1:])
        output.sample = eps
        return output

    return unet.register_forward_hook(after, with_kwargs=True)
