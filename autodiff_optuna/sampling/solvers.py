"""Deterministic solvers over any set of time steps, built on diffusers' schedulers.

``sample`` runs a fixed solver (``rules.SOLVERS``) or one rule per step (``rules.StepRule``) by
diffusers' own updates (``rules.RuleStepper``). ``DPMSolverMultistepScheduler`` accepts an
arbitrary ``timesteps=`` list; with ``algorithm_type="dpmsolver++"`` and ``solver_order=1`` its
update is exactly DDIM (eta = 0), with ``solver_order=2`` DPM-Solver++(2M), with 3
DPM-Solver++(3M): ``make_scheduler`` builds it for a user's own pipeline, and ``sample`` gives
the same result bit for bit. The last step lands on sigma = 0, i.e. the model's clean-image
prediction, as DDIM with ``set_alpha_to_one`` does.
"""

import inspect
import math

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling.noise import NoiseBatch
from autodiff_optuna.sampling.rules import (
    SOLVERS,
    RuleStepper,
    analytic_start,
    fixed_solver,
    run_rules,
    single_scheduler_solver,
    step_rules,
    training_schedule,
    without_scale,
)
from autodiff_optuna.sampling.schedules import Schedule
from autodiff_optuna.sampling.skipping import skipping

# the solvers one DPMSolverMultistepScheduler runs (what ``make_scheduler`` builds)
SOLVER_ORDERS = {name: rule.order for name, rule in SOLVERS.items()
                 if not rule.corrector and rule.method == "dpm"}


def _solver(training_config: dict, solver: str, scheduler_class=None):
    """The solver's scheduler over the model's training schedule, before any time steps: a
    fixed solver of ``rules.SOLVERS`` that one ``DPMSolverMultistepScheduler`` runs (or
    ``scheduler_class``, a subclass of it)."""
    from diffusers import DPMSolverMultistepScheduler

    rule = step_rules(solver, 1)[0]  # an unknown name: one line that lists the known
    if solver not in SOLVER_ORDERS and scheduler_class is None:
        why = "UniPC's corrector" if rule.corrector else "iPNDM"
        raise UsageError(f"no DPMSolverMultistepScheduler runs solver {solver!r} ({why}); "
                         f"those that do: {', '.join(SOLVER_ORDERS)}")
    return (scheduler_class or DPMSolverMultistepScheduler).from_config(
        training_schedule(training_config),
        algorithm_type="dpmsolver++",
        solver_order=SOLVER_ORDERS.get(solver, 1),
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
        thresholding=False,
    )


def make_scheduler(model: DiffusionModel, solver: str, timesteps: Schedule):
    """A scheduler that runs the fixed ``solver`` over ``timesteps`` as ``sample`` does: one
    ``DPMSolverMultistepScheduler``, or for ``ipndm`` ours (``sampling.ipndm``), whose first
    network evaluation must see ``first_input`` of the noise."""
    scheduler_class = None
    if analytic_start(solver):
        from autodiff_optuna.sampling.ipndm import IPNDMScheduler as scheduler_class
    scheduler = _solver(model.scheduler_config, solver, scheduler_class)
    scheduler.set_timesteps(timesteps=list(timesteps), device=model.device)
    return scheduler


def scheduler_solver(solver, steps: int) -> str | None:
    """The fixed solver ``make_scheduler`` builds one scheduler of to run ``solver`` (a name or
    one rule per step) over ``steps`` steps: a single ``DPMSolverMultistepScheduler``'s, or
    ``ipndm``; None for rules no one scheduler runs (mixed orders, UniPC's corrector). A
    noise-prediction scale the same at every step is the caller's to apply (``common_scale``:
    the scheduler's ``step`` given the network's output divided by it)."""
    split = without_scale(solver, steps)
    if split is None:
        return None
    solver = split[0]
    name = fixed_solver(solver, steps)
    if name is not None and analytic_start(name):
        return name
    return single_scheduler_solver(solver, steps)


def solver_config(training_config: dict, solver: str) -> dict:
    """What a diffusers user builds ``make_scheduler``'s solver from: the class name and the
    config (``DPMSolverMultistepScheduler.from_config(config)``), as plain JSON values."""
    scheduler = _solver(training_config, solver)
    accepted = inspect.signature(type(scheduler).__init__).parameters
    config = {key: list(value) if isinstance(value, tuple) else value
              for key, value in scheduler.config.items()
              # the class's own settings (not the training scheduler's others, which it
              # ignores), less -inf (not JSON): lambda_min_clipped's default, which it restores
              if key in accepted and not _infinite(value)}
    return {"scheduler": type(scheduler).__name__, "scheduler_config": config}


def _infinite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


@torch.inference_mode()
def sample(model: DiffusionModel, timesteps: Schedule, batch: NoiseBatch, solver="ddim",
           batch_size: int | None = None, skip=None) -> torch.Tensor:
    """Run the solver from ``batch.noise`` over ``timesteps``; returns images in model range
    (``model.decode`` of the final samples: a latent model's latents are decoded).

    ``solver``: a name of ``rules.SOLVERS`` or one ``StepRule`` per step (``rules.step_rules``);
    ``ipndm``, and rules whose first is an ipndm rule, start from the noise at the training
    schedule's last step (``rules``' AFS).
    ``skip`` holds, per step, the names of the layers bypassed at that step (None: full network).
    """
    rules = step_rules(solver, len(timesteps))
    n = len(batch.noise)
    skip = skip or [()] * len(timesteps)
    layers = model.skippable_layers() if any(skip) else {}
    model.prepare()  # batch sizing and --compile, once, whatever batch size is passed here
    # default: what the model says its device takes (real models: measured on CUDA), else all
    batch_size = batch_size or model.batch_size or n
    stepper = RuleStepper(model.scheduler_config)
    steps, sigmas = stepper.schedule(timesteps, model.device)
    noise_sigma = stepper.start(timesteps, solver)
    outputs = []
    for start in range(0, n, batch_size):
        x = batch.noise[start:start + batch_size].to(model.device)
        labels = (None if batch.labels is None
                  else batch.labels[start:start + batch_size].to(model.device))
        x = run_rules(stepper, sigmas, rules, x, network_at(model, steps, labels, layers, skip),
                      start=noise_sigma)
        outputs.append(model.decode(x).cpu())  # a batch at a time: latents never pile up
    return torch.cat(outputs)


def network_at(model: DiffusionModel, steps: torch.Tensor, labels, layers=None, skip=None):
    """``network(i, x)`` for ``rules.run_rules``: the model's epsilon at step i of ``steps``,
    with that step's layers of ``skip`` bypassed."""
    def network(i: int, x: torch.Tensor) -> torch.Tensor:
        with skipping(layers or {}, skip[i] if skip else ()):
            return model.predict_noise(x, steps[i], labels)
    return network
