"""The read side of a study: what it was made with and what it found.

Everything that shows or exports a result (``best``, ``export``, ``study``'s last lines, the
report, the notebook, the dashboard note) reads studies through these functions, never through
the search's own modules, so that they all give the same answer. (The benchmarks keep their own
record of stage 1's best and Optuna's stage-2 front, so that their rounds stay comparable.)

The result of a search (``study_result``) is defined once, over the complete trials of both
stages, which are all scored on the study's own noise and so comparable:

- ``best``: the lowest-FID candidate;
- ``front``: the Pareto front of FID against GFLOPs per image, thinned so that each point saves
  at least ``min_saving`` of the full network's GFLOPs over the next better-FID point (a point
  that saves 0.01% of the compute for 19 FID is no trade-off);
- ``fast``: the cheapest front point within ``fid_tolerance`` of the best FID; ``choose`` gives
  what ``export`` writes: ``fast``, or with a budget (``--max-gflops``, or the one stage 2 was
  run with) the lowest-FID front point within it;
- ``uniform``: the baseline, the uniform spacing at the same step count with the full network.
  Nothing worse than it is ever offered as a result.
"""

from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.search import objectives
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.search.fidelity import PRUNED_AT
from autodiff_optuna.search.optuna_internals import storage_of

CONFIG_ATTR = "config"  # the user attribute that holds a study's configuration
# stage 1's record of the model's training schedule (its diffusers scheduler config)
TRAINING_SCHEDULE_ATTR = "training_schedule"
# both stages' record of the full network's GFLOPs per image at the study's step count
FULL_GFLOPS_ATTR = "full_gflops"
# stage 2's record of the GFLOPs per image no mask skips (a latent model's decoder, ...)
UNSKIPPABLE_ATTR = "unskippable_gflops"
# the result as the study command last stored it (for Optuna's own tools and the dashboard)
RESULT_ATTR = "result"

FID_TOLERANCE = 0.10  # ``fast``: FID at most this much (relative) above the best
MIN_SAVING = 0.005  # a front point saves at least this share of the full network's GFLOPs


def stored_config(study: optuna.Study) -> dict | None:
    """The configuration a study was made with (None: not made by autodiff_optuna). A field
    it lacks was added since it was made: it ran with that field's default."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    return None if stored is None else {**SearchConfig.defaults(), **stored}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials scored on all of the study's images (not those the pruner stopped early:
    their FIDs are on fewer images, and not comparable)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def uniform_timesteps(stage1: optuna.Study) -> list[int]:
    """The uniform spacing the stage-1 study queued first: the baseline of every comparison."""
    return stage1.user_attrs.get("spacings", {}).get("uniform", [])


def uniform_trial(stage1: optuna.Study) -> FrozenTrial | None:
    """The complete trial of the uniform spacing (None if it did not complete)."""
    uniform = uniform_timesteps(stage1)
    return next((t for t in complete_trials(stage1)
                 if t.user_attrs.get("timesteps") == uniform), None)


COUNT_NAMES = {"complete": "complete", "stopped_early": "stopped early (multi-fidelity)",
               "redundant": "redundant", "failed": "failed", "running": "running"}


def describe_counts(counts: dict) -> str:
    """``50 complete, 50 stopped early (multi-fidelity), 0 failed``: a stage's trials."""
    return ", ".join(f"{counts[key]} {text}" for key, text in COUNT_NAMES.items()
                     if counts.get(key) or key in ("complete", "failed"))


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """A study's trials by what happened to them. ``stopped_early``: scored on fewer images by
    the multi-fidelity pruner (they count towards ``--trials``); ``redundant``: a duplicate of
    another trial's candidate, or beyond the target another worker reached (no work done)."""
    counts = dict.fromkeys(COUNT_NAMES, 0)
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            counts["stopped_early" if PRUNED_AT in trial.user_attrs else "redundant"] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed"] += 1
        else:  # running, or queued
            counts["running"] += 1
    return counts


@dataclass(frozen=True)
class Point:
    """One scored candidate of either stage."""

    stage: int
    study: str
    trial: int
    timesteps: list[int]
    skip: list[list[str]]  # per step, the layers skipped there (stage 1: none)
    fid: float
    gflops: float | None  # per image (None: a study made before it was recorded)

    @property
    def skipped(self) -> int:
        return sum(len(s) for s in self.skip)

    def share(self, full_gflops: float | None) -> float | None:
        """Its GFLOPs as a share of the full network's."""
        return None if self.gflops is None or not full_gflops else self.gflops / full_gflops

    def as_dict(self, full_gflops: float | None = None) -> dict:
        return {"stage": self.stage, "study": self.study, "trial": self.trial,
                "timesteps": self.timesteps, "skip": self.skip, "fid": self.fid,
                "gflops": self.gflops, "gflops_share": self.share(full_gflops)}

    def describe(self, full_gflops: float | None = None) -> str:
        """``stage 2 trial 57: [491, 381, 258, 101], FID 8.142, 0.1293 GFLOPs/image (99.8% of
        the full network), 1 layer-step skipped``"""
        text = f"stage {self.stage} trial {self.trial}: {self.timesteps}, FID {self.fid:.3f}"
        if self.gflops is not None:
            text += f", {self.gflops:.4f} GFLOPs/image"
            share = self.share(full_gflops)
            if share is not None:
                text += f" ({share:.1%} of the full network)"
        if self.stage == 2:
            text += f", {self.skipped} layer-step{'s' * (self.skipped != 1)} skipped"
        return text


@dataclass(frozen=True)
class StudyResult:
    """What a two-stage search found (see the module's docstring); ``study_result`` makes it."""

    stage1: optuna.Study
    stage2: optuna.Study | None
    config: dict
    full_gflops: float | None
    uniform: Point | None
    best: Point
    front: list[Point]  # thinned, cheapest first (so the best is last)
    fid_tolerance: float = FID_TOLERANCE
    min_saving: float = MIN_SAVING
    counts: dict = field(default_factory=dict)  # stage number -> trial_counts

    @property
    def name(self) -> str:
        return self.stage1.study_name

    @property
    def stage2_budget(self) -> float | None:
        """The ``--max-gflops`` stage 2 was run with (None: none)."""
        if self.stage2 is None:
            return None
        return self.stage2.user_attrs.get(CONFIG_ATTR, {}).get("max_gflops")

    @property
    def fast(self) -> Point:
        """The cheapest front point within the FID tolerance of the best (and no worse than
        the uniform schedule); the best itself where nothing cheaper is that good."""
        limit = self.best.fid * (1 + self.fid_tolerance)
        if self.uniform is not None:
            limit = min(limit, max(self.uniform.fid, self.best.fid))
        return next(p for p in self.front if p.fid <= limit)

    def choose(self, max_gflops: float | None = None) -> Point:
        """What ``export`` writes: ``fast``, or with a budget (``max_gflops``, else the one
        stage 2 was run with) the lowest-FID front point within it. A budget that buys nothing
        as good as the uniform schedule is refused in one line naming the cheapest point that
        is, and the budget that buys it."""
        budget = max_gflops if max_gflops is not None else self.stage2_budget
        if budget is None:
            return self.fast
        if self.full_gflops is None:
            raise UsageError(f"study {self.name!r} has not recorded its GFLOPs: rerun its study "
                             "command once (it records them), then choose by --max-gflops")
        within = [p for p in self.front if p.gflops <= budget]
        pick = min(within, key=lambda p: p.fid) if within else None
        if pick is not None and (self.uniform is None or pick.fid <= self.uniform.fid):
            return pick
        # the best is on the front and no worse than the uniform schedule (one of the points)
        good = next(p for p in self.front if self.uniform is None or p.fid <= self.uniform.fid)
        cheapest = f"{good.describe(self.full_gflops)} (--max-gflops {_ceil4(good.gflops)})"
        if pick is None:
            baseline = ("" if self.uniform is None else
                        f" no worse than the uniform schedule (FID {self.uniform.fid:.3f})")
            raise UsageError(f"no candidate of {self.name!r} costs <= {budget} GFLOPs/image; "
                             f"the cheapest{baseline}: {cheapest}")
        raise UsageError(f"every candidate of {self.name!r} within {budget} GFLOPs/image is worse "
                         f"than the uniform schedule (FID {self.uniform.fid:.3f}; the best there: "
                         f"FID {pick.fid:.3f}); the cheapest that is not: {cheapest}")

    def exported(self, max_gflops: float | None = None) -> tuple[Point | None, str]:
        """(``choose(max_gflops)``, its rule) for a listing of the result. A budget asked for
        (``max_gflops``) that buys nothing good is refused, as ``choose`` refuses it; the
        budget stage 2 ran with is not asked for here, so the listing goes on: (None, why
        not)."""
        if max_gflops is not None:
            return self.choose(max_gflops), self.rule(max_gflops)
        try:
            return self.choose(), self.rule()
        except UsageError as refused:
            return None, str(refused)

    def rule(self, max_gflops: float | None = None) -> str:
        """How ``choose(max_gflops)`` picks, in words."""
        budget = max_gflops if max_gflops is not None else self.stage2_budget
        if budget is not None:
            return f"the lowest FID within {budget} GFLOPs/image"
        return f"the cheapest within {self.fid_tolerance:.0%} of the best FID"

    def as_dict(self, max_gflops: float | None = None) -> dict:
        """The result as ``best --json`` and ``study --json`` print it (``export`` None, and
        ``export_refused`` why, where the budget stage 2 ran with buys nothing as good as the
        uniform schedule; ``max_gflops`` that buys nothing good is refused, as by ``choose``)."""
        full = self.full_gflops
        config = self.config
        summary = {
            "study": self.name,
            "stage2_study": self.stage2.study_name if self.stage2 is not None else None,
            **{key: config.get(key) for key in ("model", "steps", "solver", "samples", "seed",
                                                "sampler", "model_weights")},
            "fid_features": self.stage1.user_attrs.get("fid_features"),
            "full_gflops": full,
            "fid_tolerance": self.fid_tolerance,
            "min_saving": self.min_saving,
            "best": self.best.as_dict(full),
            "export": None,
            "uniform": self.uniform.as_dict(full) if self.uniform is not None else None,
            "front": [p.as_dict(full) for p in self.front],
            "trials": {f"stage{stage}": counts for stage, counts in self.counts.items()},
        }
        pick, rule = self.exported(max_gflops)
        if pick is not None:
            summary["export"] = pick.as_dict(full)
        else:
            summary["export_refused"] = rule
        if max_gflops is not None:
            summary["max_gflops"] = max_gflops
        if self.stage2 is not None:
            summary["stage2_max_gflops"] = self.stage2_budget
            if UNSKIPPABLE_ATTR in self.stage2.user_attrs:  # a latent model's: beside full
                summary[UNSKIPPABLE_ATTR] = self.stage2.user_attrs[UNSKIPPABLE_ATTR]
        return summary

    def stored(self) -> dict:
        """The compact record ``store_result`` keeps in the studies: which trials are the
        best, the exported one and the front, and by what rule."""
        def ref(p: Point) -> dict:
            return {"stage": p.stage, "trial": p.trial, "fid": p.fid, "gflops": p.gflops}

        pick, _ = self.exported()
        return {"best": ref(self.best), "export": ref(pick) if pick is not None else None,
                "uniform": ref(self.uniform) if self.uniform is not None else None,
                "front": [ref(p) for p in self.front], "fid_tolerance": self.fid_tolerance,
                "min_saving": self.min_saving}


def _ceil4(value: float) -> float:
    """A budget, printed to 4 decimals, that still admits ``value``."""
    return -int(-value * 10_000 // 1) / 10_000


def study_result(study: optuna.Study, fid_tolerance: float = FID_TOLERANCE,
                 min_saving: float = MIN_SAVING) -> StudyResult:
    """The result of the search ``study`` belongs to (a stage-1 or a stage-2 name): both stages'
    complete trials, with the definitions of the module's docstring. A study with no complete
    trial, or one not made by autodiff_optuna, is one UsageError line."""
    if not (0 <= fid_tolerance <= 10) or not (0 <= min_saving < 1):
        raise UsageError(f"--fid-tolerance must be in [0, 10] and the minimum saving in [0, 1), "
                         f"got {fid_tolerance} and {min_saving}")
    stage1, stage2 = linked_studies(study)
    config = check_config(stage1)
    full = stage1.user_attrs.get(FULL_GFLOPS_ATTR)
    if full is None and stage2 is not None:  # a stage 1 made before it recorded them
        full = stage2.user_attrs.get(FULL_GFLOPS_ATTR)
    points = scored_points(stage1, stage2, config["steps"], full)
    if not points:
        raise UsageError(f"study {stage1.study_name!r} has no complete trial yet")
    best = min(points, key=lambda p: (p.fid, p.gflops or 0.0, p.stage, p.trial))
    front = thin(pareto(points), min_saving * full) if full else [best]
    uniform = uniform_trial(stage1)
    counts = {1: trial_counts(stage1)}
    if stage2 is not None:
        counts[2] = trial_counts(stage2)
    return StudyResult(stage1, stage2, config, full,
                       None if uniform is None else _point(stage1, 1, uniform, full,
                                                           config["steps"]),
                       best, front, fid_tolerance, min_saving, counts)


# what a reader computes with, from the stage-1 study's stored configuration
CONFIG_TYPES = {"model": str, "steps": int, "solver": str, "samples": int, "seed": int}


def check_config(stage1: optuna.Study) -> dict:
    """The stage-1 study's configuration (``stored_config``); one line, rather than a traceback
    later, for a study not made by autodiff_optuna or a configuration another program (or a
    hand) wrote with missing fields or values of the wrong type."""
    config = stored_config(stage1)
    if config is None:
        raise UsageError(f"study {stage1.study_name!r} was not made by autodiff_optuna")
    bad = [key for key, kind in CONFIG_TYPES.items()
           if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool)]
    if bad:
        raise UsageError(f"study {stage1.study_name!r}: its stored configuration is malformed "
                         f"({', '.join(bad)} missing or of the wrong type)")
    return config


def linked_studies(study: optuna.Study) -> tuple[optuna.Study, optuna.Study | None]:
    """(stage 1, its stage 2 or None) of the search ``study`` is part of."""
    if study.user_attrs.get("stage", 1) != 2:
        return study, linked_stage2(study)
    storage = storage_of(study)
    name = study.user_attrs.get("stage1_study")
    if name not in optuna.get_all_study_names(storage):
        raise UsageError(f"stage-2 study {study.study_name!r}: its stage-1 study {name!r} "
                         "is not in this storage")
    return optuna.load_study(study_name=name, storage=storage), study


def linked_stage2(stage1: optuna.Study) -> optuna.Study | None:
    """The stage-2 study ``stage1`` links to, if it is there and links back (a study of
    another program, or of another search, under that name is not taken for it)."""
    name = stage1.user_attrs.get("stage2_study")
    storage = storage_of(stage1)
    if not name or name not in optuna.get_all_study_names(storage):
        return None
    stage2 = optuna.load_study(study_name=name, storage=storage)
    attrs = stage2.user_attrs
    if attrs.get("stage") != 2 or attrs.get("stage1_study") != stage1.study_name \
            or len(stage2.directions) != 2:
        return None
    return stage2


def scored_points(stage1, stage2, steps: int, full: float | None) -> list[Point]:
    """Every complete trial of both stages as a Point (stage 1's at the full network's cost).
    A stage-2 trial over the budget stage 2 was run with is one too: the budget steered the
    search, and ``choose`` applies it to what is exported."""
    points = [_point(stage1, 1, t, full, steps) for t in complete_trials(stage1)]
    if stage2 is not None:
        points += stage2_points(stage2, steps)
    return points


def stage2_points(stage2: optuna.Study, steps: int) -> list[Point]:
    return [_point(stage2, 2, t, None, steps) for t in complete_trials(stage2)]


def stage2_front_size(stage2: optuna.Study, min_saving: float = MIN_SAVING) -> int:
    """The points of the result's front so far, as stage 2 runs: its own trials suffice, since
    it scores stage 1's best again (on the same noise, so with the same FID) first."""
    attrs = stage2.user_attrs  # one storage read per progress line, not two
    full = attrs.get(FULL_GFLOPS_ATTR)
    steps = attrs.get(CONFIG_ATTR, {}).get("steps", 0)
    points = stage2_points(stage2, steps)
    return len(thin(pareto(points), min_saving * full)) if full and points else 0


def _point(study, stage: int, trial: FrozenTrial, full: float | None, steps: int) -> Point:
    if stage == 1:
        skip, gflops = [[] for _ in range(steps)], full
    else:
        skip, gflops = trial.user_attrs.get("skip"), objectives.gflops(trial)
    return Point(stage, study.study_name, trial.number, trial.user_attrs.get("timesteps"),
                 skip, objectives.fid(trial), gflops)


def pareto(points: list[Point]) -> list[Point]:
    """The points no other is better than in both FID and GFLOPs, cheapest first. Of equal
    points (a stage-1 candidate that stage 2 scored again) the first stage's is kept."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.gflops, p.fid, p.stage, p.trial)):
        if not front or p.fid < front[-1].fid:
            front.append(p)
    return front


def thin(front: list[Point], min_gflops_saving: float) -> list[Point]:
    """``front`` (cheapest first) less the points that save under ``min_gflops_saving`` GFLOPs
    over the next better-FID point kept: walked from the lowest FID down."""
    kept: list[Point] = []
    for p in reversed(front):
        if not kept or kept[-1].gflops - p.gflops >= min_gflops_saving:
            kept.append(p)
    return kept[::-1]


def store_result(result: StudyResult) -> None:
    """Keep the result in both studies' user attributes (``result``), where Optuna's own tools
    and optuna-dashboard show it; a reader recomputes it with ``study_result``."""
    record = result.stored()
    for study in filter(None, (result.stage1, result.stage2)):
        study.set_user_attr(RESULT_ATTR, record)


def training_schedule(stage1: optuna.Study) -> dict | None:
    """The model's training schedule the study recorded (None: made before it was recorded,
    and not run since)."""
    schedule = stage1.user_attrs.get(TRAINING_SCHEDULE_ATTR)
    return schedule if isinstance(schedule, dict) else None


def study_listing(storage) -> list[dict]:
    """Every search in a storage, a row each (a stage-2 study is one search with its stage 1):
    model, steps, stages, trial counts, best and uniform FID. A study not made by
    autodiff_optuna is listed by name and trial counts alone."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    names = {s.study_name for s in summaries}
    def listed_with_its_stage1(summary) -> bool:
        attrs = summary.user_attrs
        return attrs.get("stage", 1) == 2 and attrs.get("stage1_study") in names

    return [_listing_row(optuna.load_study(study_name=s.study_name, storage=storage))
            for s in summaries if not listed_with_its_stage1(s)]


def _listing_row(study: optuna.Study) -> dict:
    config = stored_config(study) or {}
    stage = study.user_attrs.get("stage", 1)
    row = {"study": study.study_name, "model": config.get("model"), "steps": config.get("steps"),
           "stages": [stage] if config else [],
           "trials": {f"stage{stage}" if config else "other": trial_counts(study)},
           "best_fid": None, "uniform_fid": None}
    if not config:
        return row
    try:
        result = study_result(study)
    except UsageError:  # no complete trial yet
        return row
    return {**row, "stages": list(result.counts),
            "trials": {f"stage{k}": v for k, v in result.counts.items()},
            "best_fid": result.best.fid,
            "uniform_fid": None if result.uniform is None else result.uniform.fid}


def deletable_studies(study: optuna.Study) -> list[str]:
    """What ``delete`` removes for a name: a stage-1 study with its stage 2 (the two are one
    search), a stage-2 study alone (its stage 1 can be continued by a new stage 2)."""
    if study.user_attrs.get("stage", 1) == 2:
        return [study.study_name]
    stage2 = linked_stage2(study)
    return [study.study_name] + ([stage2.study_name] if stage2 is not None else [])
