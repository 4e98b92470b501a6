"""The rows of the top-candidates table: what each candidate is, and what it scored."""

from dataclasses import dataclass, field

import optuna

from autodiff_optuna.reporting import scope
from autodiff_optuna.search import objectives
from autodiff_optuna.search.results import CONFIG_ATTR, pareto_front, uniform_trial


@dataclass
class Row:
    label: str  # "uniform", "best 1", "front", "schedule file", ...
    study: str | None
    trial: int | None
    timesteps: list[int]
    skip: list[list[str]]  # per step, the layers skipped there
    fid: float | None  # on the study's search noise (None: not a trial of a study)
    gflops: float
    heldout_fid: float | None = None  # on held-out noise, filled in by heldout.fill
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(len(s) for s in self.skip)


def stage1_rows(stage1: optuna.Study, top: int, full_gflops: float) -> list[Row]:
    """The ``top`` best schedules and, wherever it ranks, the uniform baseline."""
    steps = stage1.user_attrs.get(CONFIG_ATTR, {}).get("steps")
    best = scope.best_trials(stage1, top)
    uniform = uniform_trial(stage1)
    rows = []
    uniform_number = uniform.number if uniform is not None else None
    for rank, trial in enumerate(best, 1):
        label = f"best {rank}" + (" (uniform)" if trial.number == uniform_number else "")
        rows.append(_row(label, stage1, trial, [[] for _ in range(steps)], objectives.fid(trial),
                         full_gflops))
    if uniform is not None and uniform_number not in {t.number for t in best}:
        rows += uniform_rows(stage1, full_gflops)
    return rows


def uniform_rows(stage1: optuna.Study, full_gflops: float) -> list[Row]:
    """The uniform baseline's row (none if its trial did not complete)."""
    uniform = uniform_trial(stage1)
    steps = stage1.user_attrs.get(CONFIG_ATTR, {}).get("steps")
    return [] if uniform is None else [_row("uniform", stage1, uniform,
                                            [[] for _ in range(steps)], objectives.fid(uniform),
                                            full_gflops)]


def stage2_rows(stage2: optuna.Study, chosen) -> list[Row]:
    """The Pareto front, cheapest first; ``chosen`` is the trade-off the page shows."""
    shown = chosen.number if chosen is not None else None
    return [_row("front (shown)" if t.number == shown else "front", stage2, t,
                 t.user_attrs["skip"], objectives.fid(t), objectives.gflops(t))
            for t in pareto_front(stage2)]


def _row(label, study, trial, skip, fid, gflops) -> Row:
    # the stored value as it is (the table escapes it; a held-out FID needs a real schedule)
    timesteps = trial.user_attrs.get("timesteps")
    return Row(label, study.study_name, trial.number,
               list(timesteps) if isinstance(timesteps, list) else timesteps,
               [list(s) for s in skip], fid, gflops)
