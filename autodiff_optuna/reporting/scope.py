"""The studies one report covers, and the trials it singles out.

A report is asked for by one study name. A stage-1 name covers that study and, when it has one,
its linked stage-2 study (``stage2_study``), on one page. A stage-2 name covers the stage-2 study
alone; its stage-1 study (``stage1_study``) is still loaded, because the uniform baseline every
comparison is made against is a trial there.
"""

import json
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from autodiff_optuna.errors import UsageError
from autodiff_optuna.search import objectives
from autodiff_optuna.search.results import CONFIG_ATTR, complete_trials
from autodiff_optuna.storage import load_existing_study


@dataclass
class ReportedStudies:
    name: str  # the study the user asked for
    stage1: optuna.Study
    stage2: optuna.Study | None

    @property
    def config(self) -> dict:
        return self.stage1.user_attrs.get(CONFIG_ATTR, {})

    @property
    def shown(self) -> list[optuna.Study]:
        """The studies whose own plots the page shows."""
        if self.name != self.stage1.study_name:
            return [self.stage2]
        return [self.stage1] + ([self.stage2] if self.stage2 is not None else [])


def load(name: str, storage) -> ReportedStudies:
    """The studies behind ``name``; a missing, foreign or empty study is one UsageError line."""
    study = load_existing_study(name, storage)
    if CONFIG_ATTR not in study.user_attrs:
        raise UsageError(f"study {name!r} was not made by autodiff_optuna: nothing to report")
    if not complete_trials(study):
        raise UsageError(f"study {name!r} has no complete trial yet: nothing to report")
    if study.user_attrs.get("stage", 1) == 2:
        stage1 = load_existing_study(study.user_attrs.get("stage1_study", ""), storage)
        _check_config(stage1)
        return ReportedStudies(name, stage1, study)
    _check_config(study)
    linked = study.user_attrs.get("stage2_study")
    stage2 = None
    if linked and linked in optuna.get_all_study_names(storage):
        stage2 = optuna.load_study(study_name=linked, storage=storage)
    return ReportedStudies(name, study, stage2)


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


def best_trials(stage1: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` lowest-FID complete trials, one per distinct schedule (a trial the pruner
    stopped early has no FID on all the images, so it is not ranked)."""
    seen, ranked = set(), []
    for trial in sorted(complete_trials(stage1), key=objectives.fid):
        # as JSON: a user attribute is whatever JSON was stored, not always a list of integers
        key = json.dumps(trial.user_attrs.get("timesteps"))
        if key not in seen:
            seen.add(key)
            ranked.append(trial)
    return ranked[:top]


def stage2_pick(points: list[FrozenTrial], baseline_fid: float | None) -> FrozenTrial | None:
    """The front's trade-off the page shows in samples and as the mask: the cheapest candidate
    whose FID is no worse than the uniform schedule's with the full network; without such a
    candidate (or a baseline), the front's lowest-FID one."""
    if not points:
        return None
    good = [t for t in points if baseline_fid is not None and objectives.fid(t) <= baseline_fid]
    return good[0] if good else min(points, key=objectives.fid)
