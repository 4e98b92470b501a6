"""Solvers over any step set, per-step solver rules, standard spacings and common random numbers.

The public names are imported when first used (PEP 562): reading a study's solver rules
(``rules``) needs no torch, and a command that only reads a database should not load it.
"""

from autodiff_optuna.lazy import lazy_exports

_MODULES = {"HELDOUT": ".noise", "SEARCH": ".noise", "TEACHER": ".noise", "NoiseBatch": ".noise",
            "draw": ".noise", "SOLVERS": ".rules", "StepRule": ".rules", "Schedule": ".schedules",
            "standard_spacings": ".schedules", "noise_coordinates": ".schedules",
            "validate": ".schedules",
            "SOLVER_ORDERS": ".solvers", "sample": ".solvers"}

__all__ = list(_MODULES)

__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
