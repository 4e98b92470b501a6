"""autodiff-optuna: search a diffusion model's sampling time steps (and which layers to skip at
each) as persistent Optuna studies, and sample with the result in one call.

From one's own code: ``CandidateSpace`` and ``EvolutionarySampler`` drive an Optuna study of
one's own objective (``space.suggest(trial)`` gives the trial's candidate), and
``apply(pipe, schedule)`` makes a diffusers pipeline sample with a searched schedule.

The public names are imported when first used (PEP 562), so that the commands that only read a
study database (``best``, ``list``, ``export``) do not load torch and diffusers.
"""

import importlib

from autodiff_optuna.version import __version__

_MODULES = {"Candidate": "autodiff_optuna.search.encoding",
            "CandidateSpace": "autodiff_optuna.search.encoding",
            "EvolutionarySampler": "autodiff_optuna.search.evolutionary",
            "SearchedSchedule": "autodiff_optuna.export", "apply": "autodiff_optuna.pipelines",
            "load_schedule": "autodiff_optuna.export", "sample": "autodiff_optuna.export"}

__all__ = [*_MODULES, "__version__"]


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
