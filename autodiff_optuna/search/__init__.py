"""The two-stage search as Optuna studies: candidates and their encoding, the evolutionary
sampler, the studies of both stages, and running them.

One concept a module: ``encoding`` (candidates), ``evolutionary`` (the sampler) with its parts
``variation`` (operators), ``children`` (child strategies) and ``proposals`` (no candidate
twice), ``config`` (what defines a search), ``context`` (its model and metric),
``objectives`` (a study's values), ``stages`` (creating and resuming the linked studies),
``trial`` (the trial function), ``fidelity`` (multi-fidelity pruning), ``run`` (running a
stage to its target), ``patience`` (stage 2 ending where it finds nothing),
``session`` (a ``study`` command's run of its stages), ``progress``,
``results``, the read side that reporting, export and the benchmarks use, and ``deletion``
(deleting a search).

The public names are imported when first used (PEP 562): the read side (``results``,
``config``) needs no torch, and the commands that only read a database should not load it.
"""

import sys
import types

from autodiff_optuna.lazy import lazy_exports

_MODULES = {"Candidate": ".encoding", "CandidateSpace": ".encoding",
            "EvolutionarySampler": ".evolutionary", "MAX_CONSECUTIVE_FAILURES": ".run",
            "SearchConfig": ".config", "SearchContext": ".context", "StudyResult": ".results",
            "configure": ".config", "load_stage1": ".stages", "open_stage1": ".stages",
            "open_stage2": ".stages", "retry_stale_trial": ".run", "run": ".run",
            "stored_config": ".results", "study_result": ".results"}

__all__ = list(_MODULES)

__getattr__, __dir__ = lazy_exports(__name__, _MODULES)


class _Package(types.ModuleType):
    """The package, whose ``run`` stays the function that runs a stage. The import system binds
    a package's attribute to each submodule it loads, so loading the submodule ``run``, by
    whatever path, would otherwise make ``search.run(...)`` call a module."""

    def __setattr__(self, name, value):
        if name in _MODULES and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules under its own name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
