"""autodiff-optuna: search a diffusion model's sampling time steps (and which layers to skip at
each) as persistent Optuna studies, and sample with the result in one call."""

__version__ = "0.1.0"

from autodiff_optuna.export import SearchedSchedule, load_schedule, sample  # noqa: E402

__all__ = ["SearchedSchedule", "load_schedule", "sample", "__version__"]
