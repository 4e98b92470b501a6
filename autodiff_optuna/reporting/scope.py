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
from autodiff_optuna.reporting.text import set_aside_text
from autodiff_optuna.search.fidelity import is_carried
from autodiff_optuna.search.results import (
    CONFIG_ATTR,
    DEFAULT_RULE,
    ExportRule,
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


def load(name: str, storage, export_rule: ExportRule = DEFAULT_RULE) -> ReportedStudies:
    """The studies behind ``name`` and their result, its exported point chosen by
    ``export_rule``; a missing, foreign or empty study is one UsageError line."""
    study = load_existing_study(name, storage)
    if CONFIG_ATTR not in study.user_attrs:
        raise UsageError(f"study {name!r} was not made by autodiff_optuna: nothing to report")
    if not [t for t in complete_trials(study) if not is_carried(t)]:  # carried: stage 1's
        raise UsageError(f"study {name!r} has no complete trial yet: nothing to report")
    result = study_result(study, export_rule)
    return ReportedStudies(name, result.stage1, result.stage2, result)


def result_lines(result: StudyResult, exported: Point | None) -> list[str]:
    """The result in words (the report's list, the notebook's print-out): each point by stage
    and trial, with its FID (``search.results.Point``: confirmed, expected, or for the uniform
    baseline the mean of its search and confirmed FIDs) and its GFLOPs against
    the full network's. ``exported``: ``result.choose()`` (None: refused)."""
    full = result.full_gflops
    rule = result.rule() + ", and no worse than the uniform schedule"
    export = (exported.describe(full) if exported is not None
              else "none: " + result.exported()[1])
    uniform = ("its trial did not complete" if result.uniform is None
               else result.uniform.describe(full))
    saving = f"{result.min_saving:.1%} of the full network's GFLOPs"
    if full:
        saving += f" ({result.min_saving * full:.4f} GFLOPs/image)"
    count = len(result.front)
    aside = [f"set aside: {set_aside_text(result)}"] if result.set_aside else []
    return [
        f"best: {result.best.describe(full)}", *aside,
        f"exported (what the export command writes: {rule}): {export}",
        f"uniform baseline (same step count, full network): {uniform}",
        f"Pareto front of both stages: {count} point{'s' * (count != 1)}, each saving at least "
        f"{saving} over the next better-FID one",
    ]
