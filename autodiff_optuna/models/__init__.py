"""Model adapters behind one interface, and the registry of presets.

The public names are imported when first used (PEP 562): ``files`` and the registry's names are
read without torch by the commands that only read a study database.
"""

from autodiff_optuna.lazy import lazy_exports

_MODULES = {"DiffusionModel": "autodiff_optuna.models.base",
            "ModelOptions": "autodiff_optuna.models.registry",
            "PRESETS": "autodiff_optuna.models.registry",
            "get_preset": "autodiff_optuna.models.registry",
            "load_model": "autodiff_optuna.models.registry"}

__all__ = list(_MODULES)

__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
