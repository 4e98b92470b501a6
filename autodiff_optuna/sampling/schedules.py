"""Time-step schedules: the standard spacings and the rules every schedule obeys.

A schedule is a descending tuple of distinct integer training steps in [0, T-1]. The first step
need not be T-1: AutoDiffusion's searched schedules often start lower.
"""

import math

import numpy as np

from autodiff_optuna.errors import UsageError

Schedule = tuple[int, ...]


def validate(timesteps, num_train_timesteps: int) -> Schedule:
    """Return ``timesteps`` as a canonical schedule, or raise UsageError saying what is wrong."""
    steps = list(timesteps)
    if not steps:
        raise UsageError("a schedule needs at least one time step")
    if any(not isinstance(t, (int, np.integer)) or isinstance(t, bool) for t in steps):
        raise UsageError(f"time steps must be integers, got {steps}")
    bad = [t for t in steps if not 0 <= t < num_train_timesteps]
    if bad:
        raise UsageError(f"time steps {bad} are outside [0, {num_train_timesteps - 1}]")
    if len(set(steps)) != len(steps):
        dupes = sorted({t for t in steps if steps.count(t) > 1}, reverse=True)
        raise UsageError(f"time steps must be distinct; repeated: {dupes}")
    return tuple(sorted((int(t) for t in steps), reverse=True))


def uniform(steps: int, num_train_timesteps: int) -> Schedule:
    """DDIM's uniform spacing as guided-diffusion and the AutoDiffusion paper use it ("ddimK"):
    a stride of T // K starting at 0, e.g. 750, 500, 250, 0 for K=4."""
    stride = num_train_timesteps // steps
    return tuple(range(stride * (steps - 1), -1, -stride))


def trailing(steps: int, num_train_timesteps: int) -> Schedule:
    """Trailing spacing (Lin et al. 2024): starts at T-1, e.g. 999, 749, 499, 249."""
    ratio = num_train_timesteps / steps
    return tuple(int(round(num_train_timesteps - i * ratio)) - 1 for i in range(steps))


def linspace(steps: int, num_train_timesteps: int) -> Schedule:
    """Evenly spaced from T-1 down to 0, both ends included."""
    if steps == 1:
        return (num_train_timesteps - 1,)
    return tuple(int(t) for t in np.rint(np.linspace(num_train_timesteps - 1, 0, steps)))


def quadratic(steps: int, num_train_timesteps: int) -> Schedule:
    """DDIM's quadratic spacing: dense near the data, sparse near the noise."""
    points = np.linspace(0, math.sqrt(num_train_timesteps * 0.8), steps) ** 2
    return _distinct_descending(points.astype(int), num_train_timesteps)


def log_snr(steps: int, num_train_timesteps: int, alphas_cumprod: np.ndarray) -> Schedule:
    """Evenly spaced in log signal-to-noise ratio (DPM-Solver's "logSNR" spacing)."""
    lam = np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)
    targets = np.linspace(lam[-1], lam[0], steps)
    points = [int(np.argmin(np.abs(lam - target))) for target in targets]
    return _distinct_descending(points, num_train_timesteps)


def _distinct_descending(points, num_train_timesteps: int) -> Schedule:
    """Points rounded onto the grid can collide at large K: push them apart, within [0, T-1]."""
    out = sorted((min(max(int(p), 0), num_train_timesteps - 1) for p in points), reverse=True)
    for i in range(1, len(out)):  # top down: strictly descending
        out[i] = min(out[i], out[i - 1] - 1)
    out[-1] = max(out[-1], 0)
    for i in range(len(out) - 2, -1, -1):  # bottom up: back inside [0, T-1]
        out[i] = max(out[i], out[i + 1] + 1)
    return tuple(out)


# EDM's rho (Karras et al. 2022): steps evenly spaced in sigma ** (1 / rho) balance a few-step
# sampler's errors between the noisy and the clean end
KARRAS_RHO = 7.0
# Above this noise level (data in [-1, 1]) a sample is noise to within half a percent: DDPM's
# linear schedule ends at 157, guided-diffusion's cosine schedule jumps to 10^4 at its last step
# alone, and a zero-terminal-SNR schedule to infinity. Noise levels are capped there, so that
# such a step does not take most of the coordinate (and of the draws made in it)
SIGMA_MAX = 200.0


def noise_coordinates(alphas_cumprod: np.ndarray, rho: float = KARRAS_RHO) -> np.ndarray:
    """Each training step's noise level as EDM spaces them, ``sigma_t ** (1 / rho)`` with
    ``sigma_t = sqrt((1 - abar_t) / abar_t)`` capped at ``SIGMA_MAX``: increasing in t (where
    capped, by a vanishing slope), and a move of the same size there changes a sample about as
    much near the data as near the noise, where a move of the same number of steps does not (10
    steps near t = 0 ruin a 4-step schedule that 50 near t = 750 barely change; BENCHMARKS.md,
    "Stage 1's moves in noise levels")."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):  # abar = 0: infinite noise, capped below
        sigma = np.sqrt((1.0 - abar) / abar)
    coordinates = np.minimum(sigma, SIGMA_MAX) ** (1.0 / rho)
    capped = sigma >= SIGMA_MAX  # stay in order, a vanishing step apart
    coordinates[capped] += np.arange(1, capped.sum() + 1) * 1e-9 * coordinates[capped]
    return coordinates


def standard_spacings(steps: int, num_train_timesteps: int,
                      alphas_cumprod: np.ndarray) -> dict[str, Schedule]:
    """The spacings a search starts from and is compared against, "uniform" first."""
    spacings = {
        "uniform": uniform(steps, num_train_timesteps),
        "trailing": trailing(steps, num_train_timesteps),
        "linspace": linspace(steps, num_train_timesteps),
        "quadratic": quadratic(steps, num_train_timesteps),
        "logsnr": log_snr(steps, num_train_timesteps, alphas_cumprod),
    }
    return {name: validate(s, num_train_timesteps) for name, s in spacings.items()}
