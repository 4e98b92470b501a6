"""Model adapters behind one interface, and the registry of presets."""

from autodiff_optuna.models.base import DiffusionModel
from autodiff_optuna.models.registry import PRESETS, ModelOptions, get_preset, load_model

__all__ = ["DiffusionModel", "ModelOptions", "PRESETS", "get_preset", "load_model"]
