"""The two-stage search as Optuna studies: candidates and their encoding, the evolutionary
sampler, the studies of both stages, and running them.

One concept a module: ``encoding`` (candidates), ``evolutionary`` (the sampler) with its parts
``variation`` (operators), ``children`` (child strategies) and ``proposals`` (no candidate
twice), ``config`` (what defines a search), ``context`` (its model and metric),
``objectives`` (a study's values), ``stages`` (creating and resuming the linked studies),
``trial`` (the trial function), ``fidelity`` (multi-fidelity pruning), ``run`` (running a
stage to its target), ``progress``, and ``results``, the read side that reporting, export
and the benchmarks use.
"""

from autodiff_optuna.search.config import SearchConfig, configure
from autodiff_optuna.search.context import SearchContext
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.results import StudyResult, stored_config, study_result
from autodiff_optuna.search.run import MAX_CONSECUTIVE_FAILURES, retry_stale_trial, run
from autodiff_optuna.search.stages import load_stage1, open_stage1, open_stage2

__all__ = ["Candidate", "CandidateSpace", "EvolutionarySampler", "MAX_CONSECUTIVE_FAILURES",
           "SearchConfig", "SearchContext", "StudyResult", "configure", "load_stage1",
           "open_stage1", "open_stage2", "retry_stale_trial", "run", "stored_config",
           "study_result"]
