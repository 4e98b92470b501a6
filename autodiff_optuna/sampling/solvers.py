"""Deterministic solvers over any set of time steps, built on diffusers' schedulers.

``DPMSolverMultistepScheduler`` accepts an arbitrary ``timesteps=`` list. With
``algorithm_type="dpmsolver++"`` and ``solver_order=1`` its update is exactly DDIM (eta = 0);
with ``solver_order=2`` it is DPM-Solver++(2M). The last step lands on sigma = 0, i.e. the model's
clean-image prediction, as DDIM with ``set_alpha_to_one`` does.
"""

import torch

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.sampling.noise import NoiseBatch
from autodiff_optuna.sampling.schedules import Schedule
from autodiff_optuna.sampling.skipping import skipping

SOLVER_ORDERS = {"ddim": 1, "dpmpp2m": 2}


def make_scheduler(model: DiffusionModel, solver: str, timesteps: Schedule):
    from diffusers import DPMSolverMultistepScheduler

    if solver not in SOLVER_ORDERS:
        raise UsageError(f"unknown solver {solver!r}; known: {', '.join(SOLVER_ORDERS)}")
    scheduler = DPMSolverMultistepScheduler.from_config(
        model.scheduler_config,
        algorithm_type="dpmsolver++",
        solver_order=SOLVER_ORDERS[solver],
        prediction_type="epsilon",
        final_sigmas_type="zero",
        lower_order_final=True,
        thresholding=False,
    )
    scheduler.set_timesteps(timesteps=list(timesteps), device=model.device)
    return scheduler


@torch.inference_mode()
def sample(model: DiffusionModel, timesteps: Schedule, batch: NoiseBatch, solver: str = "ddim",
           batch_size: int | None = None, skip=None) -> torch.Tensor:
    """Run the solver from ``batch.noise`` over ``timesteps``; returns samples in model range.

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
        outputs.append(x.cpu())
    return torch.cat(outputs)
