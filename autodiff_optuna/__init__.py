"""autodiff-optuna: search a diffusion model's sampling time steps (and which layers to skip at
each) as persistent Optuna studies, and sample with the result in one call.

From one's own code: ``CandidateSpace`` and ``EvolutionarySampler`` drive an Optuna study of
one's own objective (``space.suggest(trial)`` gives the trial's candidate), and
``apply(pipe, schedule)`` makes a diffusers pipeline sample with a searched schedule.
"""

from autodiff_optuna.export import SearchedSchedule, load_schedule, sample
from autodiff_optuna.pipelines import apply
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.version import __version__

__all__ = ["Candidate", "CandidateSpace", "EvolutionarySampler", "SearchedSchedule", "apply",
           "load_schedule", "sample", "__version__"]
