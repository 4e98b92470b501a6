"""One line per finished trial: number, candidate, FID, best so far, ETA."""

import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.search import objectives
from autodiff_optuna.search.fidelity import PRUNED_AT, n_evaluated


class ProgressPrinter:
    """An Optuna callback; ``target`` is the number of evaluated trials the study should reach
    (complete, or stopped early by the multi-fidelity pruner: ``fidelity.n_evaluated``)."""

    def __init__(self, target: int, stream=None, label: str = ""):
        self._target = target
        self._label = f"{label} " if label else ""
        self._stream = stream or sys.stdout
        self._started = time.monotonic()
        self._finished_here = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._finished_here += 1
        n_complete = n_evaluated(study)  # what counts towards the target
        per_trial = (time.monotonic() - self._started) / self._finished_here
        eta = _duration(per_trial * max(0, self._target - n_complete))
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
                      f"GFLOPs {objectives.gflops(trial):.4f}  front {len(study.best_trials)}")
        print(f"{self._label}[{n_complete:>4}/{self._target}] trial {trial.number:>4}  {steps}  "
              f"{result}  "
              f"({trial.duration.total_seconds() if trial.duration else 0:.1f}s, ETA {eta})",
              file=self._stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
