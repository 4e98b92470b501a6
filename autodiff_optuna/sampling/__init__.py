"""Solvers over any step set, per-step solver rules, standard spacings and common random numbers."""

from autodiff_optuna.sampling.noise import HELDOUT, SEARCH, TEACHER, NoiseBatch, draw
from autodiff_optuna.sampling.rules import SOLVERS, StepRule
from autodiff_optuna.sampling.schedules import Schedule, standard_spacings, validate
from autodiff_optuna.sampling.solvers import SOLVER_ORDERS, sample

__all__ = ["HELDOUT", "SEARCH", "TEACHER", "NoiseBatch", "draw", "SOLVERS", "StepRule",
           "Schedule", "standard_spacings", "validate", "SOLVER_ORDERS", "sample"]
