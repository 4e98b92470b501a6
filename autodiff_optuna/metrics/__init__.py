"""FID (clean-fid's Inception, or the bundled digits feature network), GFLOPs per image, and
scoring a schedule's samples.

The public names are imported when first used (PEP 562), as the other packages' are.
"""

import importlib

_MODULES = {"check_same_scorer": "autodiff_optuna.metrics.scorers",
            "load_scorer": "autodiff_optuna.metrics.scorers"}

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
