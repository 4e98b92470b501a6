"""The one registry of model presets: which network, which adapter, which FID features."""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.models.base import DiffusionModel

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str  # which adapter loads it
    directory: Path
    fid: str  # which FIDScorer scores it
    description: str


PRESETS = {
    preset.name: preset
    for preset in [
        ModelPreset("digits", "diffusers-unet", WEIGHTS_DIR / "digits", "digits",
                    "bundled 8x8 DDPM trained on scikit-learn's handwritten digits"),
    ]
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


@lru_cache(maxsize=None)
def load_model(name: str, device: str = "cpu") -> DiffusionModel:
    preset = get_preset(name)
    if preset.family == "diffusers-unet":
        from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel

        return DiffusersUNetModel(name, preset.directory, device)
    raise AssertionError(f"no adapter for family {preset.family!r}")


def load_scorer(name: str):
    """The FID scorer for a model preset, built once per process."""
    preset = get_preset(name)
    if preset.fid == "digits":
        from autodiff_optuna.metrics.fid import digits_scorer

        return digits_scorer(preset.directory)
    raise AssertionError(f"no FID scorer {preset.fid!r}")
