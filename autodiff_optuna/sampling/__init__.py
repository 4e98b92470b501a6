"""Solvers over any step set, standard spacings and common random numbers."""

from autodiff_optuna.sampling.noise import HELDOUT, SEARCH, NoiseBatch, draw
from autodiff_optuna.sampling.schedules import Schedule, standard_spacings, validate
from autodiff_optuna.sampling.solvers import SOLVER_ORDERS, sample

__all__ = ["HELDOUT", "SEARCH", "NoiseBatch", "draw", "Schedule", "standard_spacings", "validate",
           "SOLVER_ORDERS", "sample"]
