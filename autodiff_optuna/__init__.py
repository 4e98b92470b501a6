"""autodiff-optuna: search a diffusion model's sampling time steps as a persistent Optuna study."""

__version__ = "0.1.0"
