"""autodiff-optuna: search a diffusion model's sampling time steps (and which layers to skip at
each) as persistent Optuna studies, and sample with the result in one call.

From one's own code: ``CandidateSpace`` and ``EvolutionarySampler`` drive an Optuna study of
one's own objective (``space.suggest(trial)`` gives the trial's candidate), and
``apply(pipe, schedule)`` makes a diffusers pipeline sample with a searched schedule.

The public names are imported when first used (PEP 562), so that the commands that only read a
study database (``best``, ``list``) do not load torch and diffusers; ``export`` loads them only
to make the file's diffusers fields (diffusers' scheduler makes their config).
"""

from autodiff_optuna.lazy import lazy_exports
from autodiff_optuna.version import __version__

_MODULES = {"Candidate": "autodiff_optuna.search.encoding",
            "CandidateSpace": "autodiff_optuna.search.encoding",
            "EvolutionarySampler": "autodiff_optuna.search.evolutionary",
            "SearchedSchedule": "autodiff_optuna.export", "apply": "autodiff_optuna.pipelines",
            "load_schedule": "autodiff_optuna.schedule_sampling",
            "sample": "autodiff_optuna.schedule_sampling"}

__all__ = [*_MODULES, "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _MODULES)
