"""What a study's values are: the one place that names them, orders them and says which way is
better. Everything that reads a trial's values asks here instead of indexing ``values``.

Stage 1 has one value, FID; stage 2 two, FID and GFLOPs per image (both minimised).
"""

import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class Objective:
    name: str  # the metric name Optuna's plots and the dashboard label it with
    direction: str


FID = Objective("FID", "minimize")
GFLOPS = Objective("GFLOPs", "minimize")
STAGES = {1: (FID,), 2: (FID, GFLOPS)}


def of_stage(stage: int) -> tuple[Objective, ...]:
    return STAGES[stage]


def directions(stage: int) -> list[str]:
    return [o.direction for o in of_stage(stage)]


def metric_names(stage: int) -> list[str]:
    return [o.name for o in of_stage(stage)]


def label(study: optuna.Study, stage: int) -> None:
    """Name the study's values (a stored study attribute), so plots and the dashboard show
    "FID" and "GFLOPs" instead of "Objective 0"."""
    if study.metric_names != metric_names(stage):
        with warnings.catch_warnings():  # experimental in Optuna; relied on knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(stage))


def values(stage: int, fid: float, gflops: float):
    """What the trial function returns: FID, or (FID, GFLOPs) in stage 2."""
    return fid if stage == 1 else (fid, gflops)


def fid(trial: FrozenTrial) -> float:
    # a stage's trials hold one value per objective: their count says the stage
    return trial.values[of_stage(len(trial.values)).index(FID)]


def gflops(trial: FrozenTrial) -> float:
    """A stage-2 trial's GFLOPs per image."""
    return trial.values[of_stage(2).index(GFLOPS)]
