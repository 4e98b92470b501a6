"""Model adapters behind one interface, and the registry of presets.

The public names are imported when first used (PEP 562): ``files`` and the registry's names are
read without torch by the commands that only read a study database.
"""

import importlib

_MODULES = {"DiffusionModel": "autodiff_optuna.models.base",
            "ModelOptions": "autodiff_optuna.models.registry",
            "PRESETS": "autodiff_optuna.models.registry",
            "get_preset": "autodiff_optuna.models.registry",
            "load_model": "autodiff_optuna.models.registry"}

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
