"""The studies one report covers, and the result it shows.

A report is asked for by one study name. A stage-1 name covers that study and, when it has one,
its linked stage-2 study (``stage2_study``), on one page. A stage-2 name covers the stage-2 study
alone; its stage-1 study (``stage1_study``) is still loaded, because the uniform baseline every
comparison is made against is a trial there. Either way the page's best, exported and front
points are the search's one result (``search.results.study_result``) over both stages, as
``best`` and ``export`` give them.
"""

from dataclasses import dataclass

import optuna

from autodiff_optuna.errors import UsageError
from autodiff_optuna.search.results import (
    CONFIG_ATTR,
    FID_TOLERANCE,
    Point,
    StudyResult,
    complete_trials,
    study_result,
)
from autodiff_optuna.storage import load_existing_study


@dataclass
class ReportedStudies:
    name: str  # the study the user asked for
    stage1: optuna.Study
    stage2: optuna.Study | None
    result: StudyResult

    @property
    def config(self) -> dict:
        return self.stage1.user_attrs.get(CONFIG_ATTR, {})

    @property
    def shown(self) -> list[optuna.Study]:
        """The studies whose own plots the page shows."""
        if self.name != self.stage1.study_name:
            return [self.stage2]
        return [self.stage1] + ([self.stage2] if self.stage2 is not None else [])


def load(name: str, storage, fid_tolerance: float = FID_TOLERANCE) -> ReportedStudies:
    """The studies behind ``name`` and their result (``fid_tolerance``: its ``fast`` point's);
    a missing, foreign or empty study is one UsageError line."""
    study = load_existing_study(name, storage)
    if CONFIG_ATTR not in study.user_attrs:
        raise UsageError(f"study {name!r} was not made by autodiff_optuna: nothing to report")
    if not complete_trials(study):
        raise UsageError(f"study {name!r} has no complete trial yet: nothing to report")
    if study.user_attrs.get("stage", 1) == 2:
        stage1 = load_existing_study(study.user_attrs.get("stage1_study", ""), storage)
        _check_config(stage1)
        return ReportedStudies(name, stage1, study, study_result(stage1, fid_tolerance))
    _check_config(study)
    linked = study.user_attrs.get("stage2_study")
    stage2 = None
    if linked and linked in optuna.get_all_study_names(storage):
        stage2 = optuna.load_study(study_name=linked, storage=storage)
    return ReportedStudies(name, study, stage2, study_result(study, fid_tolerance))


def result_lines(result: StudyResult, exported: Point,
                 max_gflops: float | None = None) -> list[str]:
    """The result in words (the report's list, the notebook's print-out): each point by stage
    and trial, with its FID on the search noise (the uniform one's too) and its GFLOPs against
    the full network's. ``exported``: ``result.choose(max_gflops)``."""
    full = result.full_gflops
    if max_gflops is None:
        rule = (f"the cheapest front point within {result.fid_tolerance:.0%} of the best FID, "
                "and no worse than uniform")
    else:
        rule = f"the lowest-FID front point within {max_gflops} GFLOPs/image"
    uniform = ("its trial did not complete" if result.uniform is None
               else result.uniform.describe(full))
    saving = f"{result.min_saving:.1%} of the full network's GFLOPs"
    if full:
        saving += f" ({result.min_saving * full:.4f} GFLOPs/image)"
    count = len(result.front)
    return [
        f"best: {result.best.describe(full)}",
        f"exported (what `export` writes: {rule}): {exported.describe(full)}",
        f"uniform baseline (same step count, full network, same search noise): {uniform}",
        f"Pareto front of both stages: {count} point{'s' * (count != 1)}, each saving at least "
        f"{saving} over the next better-FID one",
    ]


# what the page computes with, from the stage-1 study's stored configuration
CONFIG_TYPES = {"model": str, "steps": int, "solver": str, "samples": int, "seed": int}


def _check_config(stage1: optuna.Study) -> None:
    """One line, rather than a traceback mid-report, for a configuration another program (or a
    hand) wrote with missing fields or values of the wrong type."""
    config = stage1.user_attrs.get(CONFIG_ATTR)
    if not isinstance(config, dict):
        config = {}
    bad = [key for key, kind in CONFIG_TYPES.items()
           if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool)]
    if bad:
        raise UsageError(f"study {stage1.study_name!r}: its stored configuration is malformed "
                         f"({', '.join(bad)} missing or of the wrong type)")
