"""One line per finished trial: number, candidate, FID, best so far, and the ETA of the whole
search; one line when stage 1 ends."""

import shlex
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
from autodiff_optuna.storage import record

FULL, EARLY, OTHER = "full", "early", "other"  # the kinds of trial the ETA tells apart


def trial_kind(trial: FrozenTrial) -> str:
    """``early``: stopped by the multi-fidelity pruner; ``full``: complete, scored on every
    image; ``other``: a trial that does not count towards a target (duplicate, surplus,
    failed)."""
    if PRUNED_AT in trial.user_attrs:
        return EARLY
    return FULL if trial.state == TrialState.COMPLETE else OTHER


class EtaEstimator:
    """The time still to come, from the kinds of trial still to come. A trial scored on every
    image and one the pruner stopped early cost very different times, and the share stopped
    early changes as a search goes on, so one mean over all trials jumps whenever the mix
    does. Each kind's duration is smoothed on its own, as is the share of the counted trials
    that stopped early (exponential moving averages, the latest trial weighing ``smoothing``);
    the time of trials that do not count is spread over the counted ones that follow them."""

    def __init__(self, smoothing: float = 0.2):
        self.smoothing = smoothing
        self.seconds: dict[str, float] = {}  # kind -> smoothed duration
        self.early_share = 0.0
        self.overhead = 0.0  # smoothed seconds of uncounted trials per counted one
        self._uncounted = 0.0  # since the last counted trial

    def observe(self, kind: str, seconds: float) -> None:
        if kind == OTHER:
            self._uncounted += seconds
            return
        first = not self.seconds
        self.seconds[kind] = self._smooth(self.seconds.get(kind), seconds)
        self.early_share = self._smooth(None if first else self.early_share,
                                        float(kind == EARLY))
        self.overhead = self._smooth(None if first else self.overhead, self._uncounted)
        self._uncounted = 0.0

    def _smooth(self, average: float | None, value: float) -> float:
        return value if average is None else average + self.smoothing * (value - average)

    def full_seconds(self) -> float:
        """A trial scored on every image (before any has been: one stopped early, or 0)."""
        return self.seconds.get(FULL, self.seconds.get(EARLY, 0.0))

    def per_trial(self) -> float:
        """The expected time of the next counted trial of this stage, as the mix goes now."""
        full = self.full_seconds()
        early = self.seconds.get(EARLY, full)
        return self.early_share * early + (1 - self.early_share) * full + self.overhead

    def remaining(self, here: int, later: int = 0) -> float:
        """Seconds for ``here`` more counted trials of this stage, then ``later`` of the next
        (stage 2, which scores every candidate on all the images: each a full trial)."""
        return max(0, here) * self.per_trial() + max(0, later) * self.full_seconds()


class ProgressPrinter:
    """An Optuna callback; ``target`` is the number of evaluated trials the study should reach
    (complete, or stopped early by the multi-fidelity pruner: ``fidelity.n_evaluated``), and
    ``later`` the trials of a stage still to run after it (stage 2, during stage 1), which the
    ETA includes (``EtaEstimator``). A trial's cost is the time since the previous line: the
    sampler's and the database's share of it too."""

    def __init__(self, target: int, stream=None, label: str = "", later: int = 0):
        self._target = target
        self._later = later
        self._label = f"{label} " if label else ""
        self._stream = stream or sys.stdout
        self._last = time.monotonic()
        self.eta = EtaEstimator()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        now = time.monotonic()
        self.eta.observe(trial_kind(trial), now - self._last)
        self._last = now
        n_complete = n_evaluated(study)  # what counts towards the target
        eta = duration(self.eta.remaining(self._target - n_complete, self._later))
        steps = trial.user_attrs.get(record.TIMESTEPS_ATTR)
        if PRUNED_AT in trial.user_attrs:
            fid = trial.intermediate_values.get(trial.user_attrs[PRUNED_AT], float("nan"))
            result = f"stopped at {trial.user_attrs[PRUNED_AT]} images, FID there {fid:.3f}"
        elif trial.state != TrialState.COMPLETE:
            attrs = trial.user_attrs
            reason = (attrs.get(record.FAIL_REASON_ATTR) or attrs.get(record.SURPLUS_ATTR)
                      or f"duplicate of trial {attrs.get(record.DUPLICATE_OF_ATTR)}")
            result = f"{trial.state.name}: {reason}"
        elif len(trial.values) == 1:
            result = f"FID {objectives.fid(trial):8.3f}  best {study.best_value:8.3f}"
        else:  # stage 2: FID and GFLOPs
            skipped = sum(len(s) for s in trial.user_attrs.get(record.SKIP_ATTR, []))
            result = (f"skips {skipped:>2}  FID {objectives.fid(trial):8.3f}  "
                      f"GFLOPs {objectives.gflops(trial):.4f}  front {stage2_front_size(study)}")
        print(f"{self._label}[{n_complete:>4}/{self._target}] trial {trial.number:>4}  {steps}  "
              f"{result}  "
              f"({trial.duration.total_seconds() if trial.duration else 0:.1f}s, ETA {eta})",
              file=self._stream, flush=True)


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


def resume_line(name: str, argv: list[str]) -> str:
    """What a search stopped by Ctrl-C prints: the command, as it was given, that resumes it."""
    return (f"interrupted; rerun the same command to resume study {name!r}: "
            f"python -m autodiff_optuna {shlex.join(argv)}")


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
