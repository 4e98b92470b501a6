"""One line per finished trial: number, candidate, FID, best so far, and the ETA of the whole
search; one line when stage 1 ends."""

import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.search import objectives
from autodiff_optuna.search.fidelity import PRUNED_AT, n_evaluated
from autodiff_optuna.search.results import (
    complete_trials,
    describe_counts,
    linked_stage2,
    stage2_front_size,
    trial_counts,
    uniform_trial,
)


class ProgressPrinter:
    """An Optuna callback; ``target`` is the number of evaluated trials the study should reach
    (complete, or stopped early by the multi-fidelity pruner: ``fidelity.n_evaluated``), and
    ``later`` the trials of a stage still to run after it (stage 2, during stage 1), which the
    ETA includes: each estimated at this stage's mean complete trial (stage 2 scores every
    candidate on all the images)."""

    def __init__(self, target: int, stream=None, label: str = "", later: int = 0):
        self._target = target
        self._later = later
        self._label = f"{label} " if label else ""
        self._stream = stream or sys.stdout
        self._started = time.monotonic()
        self._finished_here = 0
        self._complete_seconds: list[float] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._finished_here += 1
        if trial.state == TrialState.COMPLETE and trial.duration is not None:
            self._complete_seconds.append(trial.duration.total_seconds())
        n_complete = n_evaluated(study)  # what counts towards the target
        eta = duration(self._eta(n_complete))
        steps = trial.user_attrs.get("timesteps")
        if PRUNED_AT in trial.user_attrs:
            fid = trial.intermediate_values.get(trial.user_attrs[PRUNED_AT], float("nan"))
            result = f"stopped at {trial.user_attrs[PRUNED_AT]} images, FID there {fid:.3f}"
        elif trial.state != TrialState.COMPLETE:
            reason = (trial.user_attrs.get("fail_reason") or trial.user_attrs.get("surplus")
                      or f"duplicate of trial {trial.user_attrs.get('duplicate_of')}")
            result = f"{trial.state.name}: {reason}"
        elif len(trial.values) == 1:
            result = f"FID {objectives.fid(trial):8.3f}  best {study.best_value:8.3f}"
        else:  # stage 2: FID and GFLOPs
            skipped = sum(len(s) for s in trial.user_attrs.get("skip", []))
            result = (f"skips {skipped:>2}  FID {objectives.fid(trial):8.3f}  "
                      f"GFLOPs {objectives.gflops(trial):.4f}  front {stage2_front_size(study)}")
        print(f"{self._label}[{n_complete:>4}/{self._target}] trial {trial.number:>4}  {steps}  "
              f"{result}  "
              f"({trial.duration.total_seconds() if trial.duration else 0:.1f}s, ETA {eta})",
              file=self._stream, flush=True)

    def _eta(self, n_evaluated_now: int) -> float:
        per_trial = (time.monotonic() - self._started) / self._finished_here
        here = per_trial * max(0, self._target - n_evaluated_now)
        if not self._later:
            return here
        per_complete = (sum(self._complete_seconds) / len(self._complete_seconds)
                        if self._complete_seconds else per_trial)
        return here + per_complete * self._later


def remaining_stage2(stage1: optuna.Study, target: int) -> int:
    """Stage-2 trials still to run for ``target``, as stage 1 starts (its stage 2 may exist)."""
    stage2 = linked_stage2(stage1)
    return target if stage2 is None else max(0, target - n_evaluated(stage2))


def stage_done_line(stage1: optuna.Study, seconds: float | None) -> str:
    """The line stage 1 ends with: its best, the uniform baseline, its trials (``seconds``:
    this run's; None: it was complete before this run)."""
    done = "already complete" if seconds is None else f"done in {duration(seconds)}"
    complete = complete_trials(stage1)
    if not complete:
        return f"stage 1 {done}: no complete trial"
    best = min(complete, key=objectives.fid)
    uniform = uniform_trial(stage1)
    return (f"stage 1 {done}: best {best.user_attrs.get('timesteps')} FID "
            f"{objectives.fid(best):.3f} (trial {best.number}), uniform FID "
            + ("n/a" if uniform is None else f"{objectives.fid(uniform):.3f}")
            + f"; {describe_counts(trial_counts(stage1))}")


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
