"""One line per finished trial: number, candidate, FID, best so far, ETA."""

import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState


class ProgressPrinter:
    """An Optuna callback; ``target`` is the number of COMPLETE trials the study should reach."""

    def __init__(self, target: int, stream=None):
        self._target = target
        self._stream = stream or sys.stdout
        self._started = time.monotonic()
        self._finished_here = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._finished_here += 1
        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        per_trial = (time.monotonic() - self._started) / self._finished_here
        eta = _duration(per_trial * max(0, self._target - n_complete))
        steps = trial.user_attrs.get("timesteps")
        if trial.state == TrialState.COMPLETE:
            result = f"FID {trial.value:8.3f}  best {study.best_value:8.3f}"
        else:
            result = f"{trial.state.name}: {trial.user_attrs.get('fail_reason', '')}"
        print(f"[{n_complete:>4}/{self._target}] trial {trial.number:>4}  {steps}  {result}  "
              f"({trial.duration.total_seconds() if trial.duration else 0:.1f}s, ETA {eta})",
              file=self._stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
