"""Solvers over any step set, per-step solver rules, standard spacings and common random numbers.

The public names are imported when first used (PEP 562): reading a study's solver rules
(``rules``) needs no torch, and a command that only reads a database should not load it.
"""

import importlib

_MODULES = {"HELDOUT": "noise", "SEARCH": "noise", "TEACHER": "noise", "NoiseBatch": "noise",
            "draw": "noise", "SOLVERS": "rules", "StepRule": "rules", "Schedule": "schedules",
            "standard_spacings": "schedules", "validate": "schedules",
            "SOLVER_ORDERS": "solvers", "sample": "solvers"}

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
