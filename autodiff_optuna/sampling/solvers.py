"""Deterministic solvers over any set of time steps, built on diffusers' schedulers.

``DPMSolverMultistepScheduler`` accepts an arbitrary ``timesteps=`` list. With
``algorithm_type="dpmsolver++"`` and ``solver_order=1`` its update is exactly DDIM (eta = 0);
with ``solver_order=2`` it is DPM-Solver++(2M). The last step lands on sigma = 0, i.e. the model's
clean-image prediction, as DDIM with ``set_alpha_to_one`` does.
"""

import inspect
import math

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling.noise import NoiseBatch
from autodiff_optuna.sampling.schedules import Schedule
from autodiff_optuna.sampling.skipping import skipping

SOLVER_ORDERS = {"ddim": 1, "dpmpp2m": 2}


def _solver(training_config: dict, solver: str):
    """The solver's scheduler over the model's training schedule, before any time steps."""
    from diffusers import DPMSolverMultistepScheduler

    if solver not in SOLVER_ORDERS:
        raise UsageError(f"unknown solver {solver!r}; known: {', '.join(SOLVER_ORDERS)}")
    return DPMSolverMultistepScheduler.from_config(
        training_config,
        algorithm_type="dpmsolver++",
        solver_order=SOLVER_ORDERS[solver],
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
        thresholding=False,
    )


def make_scheduler(model: DiffusionModel, solver: str, timesteps: Schedule):
    scheduler = _solver(model.scheduler_config, solver)
    scheduler.set_timesteps(timesteps=list(timesteps), device=model.device)
    return scheduler


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
def sample(model: DiffusionModel, timesteps: Schedule, batch: NoiseBatch, solver: str = "ddim",
           batch_size: int | None = None, skip=None) -> torch.Tensor:
    """Run the solver from ``batch.noise`` over ``timesteps``; returns images in model range
    (``model.decode`` of the final samples: a latent model's latents are decoded).

    ``skip`` holds, per step, the names of the layers bypassed at that step (None: full network).
    """
    n = len(batch.noise)
    skip = skip or [()] * len(timesteps)
    layers = model.skippable_layers() if any(skip) else {}
    model.prepare()  # batch sizing and --compile, once, whatever batch size is passed here
    # default: what the model says its device takes (real models: measured on CUDA), else all
    batch_size = batch_size or model.batch_size or n
    outputs = []
    for start in range(0, n, batch_size):
        x = batch.noise[start:start + batch_size].to(model.device)
        labels = (None if batch.labels is None
                  else batch.labels[start:start + batch_size].to(model.device))
        # a multistep solver keeps history: one fresh scheduler per batch
        scheduler = make_scheduler(model, solver, timesteps)
        for t, skipped in zip(scheduler.timesteps, skip):
            with skipping(layers, skipped):
                eps = model.predict_noise(x, t, labels)
            x = scheduler.step(eps, t, x).prev_sample
        outputs.append(model.decode(x).cpu())  # a batch at a time: latents never pile up
    return torch.cat(outputs)
