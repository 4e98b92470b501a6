"""FID (clean-fid's Inception, or the bundled digits feature network), GFLOPs per image, and
scoring a schedule's samples.

The public names are imported when first used (PEP 562), as the other packages' are.
"""

from autodiff_optuna.lazy import lazy_exports

_MODULES = {"check_same_scorer": "autodiff_optuna.metrics.scorers",
            "load_scorer": "autodiff_optuna.metrics.scorers"}

__all__ = list(_MODULES)

__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
