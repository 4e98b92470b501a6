"""The read side of a study: what it was made with and what it found.

Everything that shows or exports a result (``best``, ``export``, ``study``'s last lines, the
report, the notebook, the dashboard note) reads studies through these functions, never through
the search's own modules, so that they all give the same answer. (The benchmarks keep their own
record of stage 1's best and Optuna's stage-2 front, so that their rounds stay comparable.)

The result of a search (``study_result``) is defined once, over the complete trials of both
stages, which are all scored on the study's own noise and so comparable. Each is ranked by what
its FID is expected to be on fresh noise: its confirmed FID (``search.confirm``) where it has
one, else its search FID plus the rise the confirmed showed (``expected_rise``), so that a
candidate that merely looked good on the search's noise does not outrank one confirmed on other
noise. ``search.confirm`` confirms until the points named below are all confirmed ones. The
uniform baseline alone is ranked by the mean of its two FIDs (``pooled_baseline``). A stage-2
point that its confirmed FID ranks ahead of stage 1's best, but the search's noise behind it,
is not offered as a result (``offered``).

- ``best``: the lowest-FID candidate;
- ``front``: the Pareto front of FID against GFLOPs per image, thinned so that each point saves
  at least ``min_saving`` of the full network's GFLOPs over the next better-FID point (a point
  that saves 0.01% of the compute for 19 FID is no trade-off);
- ``fast``: the cheapest front point within ``fid_tolerance`` of the best FID; ``choose`` gives
  what ``export`` writes: ``fast``, or with a budget (``--max-gflops``, or the one stage 2 was
  run with) the lowest-FID front point within it;
- ``uniform``: the baseline, the uniform spacing at the same step count with the full network.
  Nothing worse than it is ever offered as a result;
- ``dp``: the trajectory DP's spacing (no reference images), shown beside uniform where the
  study queued one.
"""

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.sampling.rules import describe as describe_solver
from autodiff_optuna.sampling.rules import fixed_solver, step_rules
from autodiff_optuna.search import objectives
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.search.fidelity import PRUNED_AT, is_carried, n_evaluated
from autodiff_optuna.storage import load_existing_study, record
from autodiff_optuna.storage.optuna_internals import stale_trial_ids, storage_of, trial_id
from autodiff_optuna.storage.record import (
    CONFIG_ATTR,
    DP_SPACING,
    FID_FEATURES_ATTR,
    FULL_GFLOPS_ATTR,
    RESULT_ATTR,
    RULES_ATTR,
    SKIP_ATTR,
    SPACING_ATTR,
    SPACINGS_ATTR,
    TIMESTEPS_ATTR,
    UNSKIPPABLE_ATTR,
)

FID_TOLERANCE = 0.10  # ``fast``: FID at most this much (relative) above the best
MAX_FID_TOLERANCE = 10  # a tolerance beyond this admits anything: a typo, not a choice
MIN_SAVING = 0.005  # a front point saves at least this share of the full network's GFLOPs


def tolerance_problem(fid_tolerance: float) -> str | None:
    """Why ``fid_tolerance`` is no FID tolerance (None: it is one)."""
    if not 0 <= fid_tolerance <= MAX_FID_TOLERANCE:  # NaN too
        return f"--fid-tolerance must be in [0, {MAX_FID_TOLERANCE}], got {fid_tolerance}"
    return None


def budget_problem(max_gflops: float | None) -> str | None:
    """Why ``max_gflops`` is no GFLOPs budget (None: it is one, or none was given)."""
    if max_gflops is not None and not (math.isfinite(max_gflops) and max_gflops > 0):
        return f"--max-gflops must be a positive number, got {max_gflops}"
    return None


@dataclass(frozen=True)
class ExportRule:
    """How the exported point is chosen: the cheapest front point within ``fid_tolerance`` of
    the best FID, or, with a budget, the lowest-FID front point within ``max_gflops``. A budget
    given here is asked for (one that buys nothing good is refused); without one, the budget
    stage 2 ran with applies, if any (``study_result`` resolves it once)."""

    fid_tolerance: float = FID_TOLERANCE
    max_gflops: float | None = None

    def __post_init__(self):
        problem = tolerance_problem(self.fid_tolerance) or budget_problem(self.max_gflops)
        if problem:
            raise UsageError(problem)


DEFAULT_RULE = ExportRule()  # the default tolerance; the budget stage 2 ran with, if any


def stored_config(study: optuna.Study) -> dict | None:
    """The configuration a study was made with (None: not made by autodiff_optuna). A field
    it lacks was added since it was made: it ran with that field's default."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    return {**SearchConfig.defaults(), **stored} if isinstance(stored, dict) else None


def study_solver(config: dict, rules=None):
    """What a study (its ``stored_config``) sampled a candidate with, as a schedule file holds
    it (``SearchConfig.solver_of``): a name, or one JSON rule per step."""
    solver = _search_config(config).solver_of(rules)
    if isinstance(solver, str):
        return solver
    return [rule.to_json() for rule in step_rules(solver, config["steps"])]


def solver_described(config: dict) -> str:
    """A study's solver (its ``stored_config``) as its first line says it."""
    return _search_config(config).solver_described


def _search_config(config: dict) -> SearchConfig:
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{k: v for k, v in config.items() if k in fields})


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials scored on all of the study's images (not those the pruner stopped early:
    their FIDs are on fewer images, and not comparable)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def uniform_timesteps(stage1: optuna.Study) -> list[int]:
    """The uniform spacing the stage-1 study queued first: the baseline of every comparison."""
    return stage1.user_attrs.get(SPACINGS_ATTR, {}).get("uniform", [])


def uniform_trial(stage1: optuna.Study) -> FrozenTrial | None:
    """The complete trial of the uniform spacing with the best fixed solver (None if none
    completed): where the study searches the solver, it queued uniform with each fixed solver,
    and the strongest of them is the baseline a user could pick without searching."""
    return min(uniform_trials(stage1), key=objectives.fid, default=None)


def uniform_trials(stage1: optuna.Study,
                   complete: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """The complete trials of the uniform spacing with a fixed solver: one, or one per fixed
    solver where the study searches the solver. ``complete``: stage 1's complete trials, where
    the caller has read them already."""
    uniform = uniform_timesteps(stage1)
    trials = complete_trials(stage1) if complete is None else complete
    return [t for t in trials if t.user_attrs.get(TIMESTEPS_ATTR) == uniform
            and _fixed_rules(t, len(uniform))]


def dp_trial(stage1: optuna.Study) -> FrozenTrial | None:
    """The complete trial of the trajectory DP's spacing (the best of them where the study
    searches the solver); None where the study queued none or it did not complete."""
    trials = [t for t in complete_trials(stage1) if t.user_attrs.get(SPACING_ATTR) == DP_SPACING]
    return min(trials, key=objectives.fid, default=None)


def _fixed_rules(trial: FrozenTrial, steps: int) -> bool:
    rules = trial.user_attrs.get(RULES_ATTR)
    return rules is None or fixed_solver(rules, steps) is not None


COUNT_NAMES = {"complete": "complete", "carried": "carried from stage 1 with their scores",
               "stopped_early": "stopped early (multi-fidelity)",
               "redundant": "redundant", "failed": "failed",
               "interrupted": "interrupted (queued again)", "queued": "queued",
               "running": "running"}


def describe_counts(counts: dict) -> str:
    """``50 complete, 50 stopped early (multi-fidelity), 0 failed``: a stage's trials."""
    return ", ".join(f"{counts[key]} {text}" for key, text in COUNT_NAMES.items()
                     if counts.get(key) or key in ("complete", "failed"))


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """A study's trials by what happened to them. ``stopped_early``: scored on fewer images by
    the multi-fidelity pruner (they count towards ``--trials``); ``redundant``: a duplicate of
    another trial's candidate, or beyond the target another worker reached (no work done);
    ``interrupted``: stopped by Ctrl-C or a worker's death, its candidate queued again (a
    retry names the trial it repeats); ``queued``: waiting to run; ``carried``: stage 1's
    elites in stage 2, complete with their stage-1 scores (not counted as ``complete``: they
    are not stage 2's evaluations)."""
    counts = dict.fromkeys(COUNT_NAMES, 0)
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            counts["carried" if is_carried(trial) else "complete"] += 1
        elif trial.state == TrialState.PRUNED:
            counts["stopped_early" if PRUNED_AT in trial.user_attrs else "redundant"] += 1
        elif trial.state == TrialState.FAIL:
            counts["interrupted" if trial.number in retried else "failed"] += 1
        elif trial.state == TrialState.WAITING:
            counts["queued"] += 1
        else:
            counts["running"] += 1
    return counts


@dataclass(frozen=True)
class Point:
    """One scored candidate of either stage. ``fid`` is what it is ranked and chosen by: its
    confirmed FID (``search.confirm``: on noise the search never saw) where it has one, else
    the FID the search scored it with (``search_fid``), raised by the study's ``expected_rise``
    where ``scored_points`` made it; the uniform baseline's, once confirmed, the mean of the
    two (``pooled_baseline``)."""

    stage: int
    study: str
    trial: int
    timesteps: list[int]
    skip: list[list[str]]  # per step, the layers skipped there (stage 1: none)
    fid: float
    gflops: float | None  # per image (None: a study made before it was recorded)
    # per step [order, corrector(, method(, scale))] where the solver was searched
    rules: list | None = None
    search_fid: float | None = None  # the search's own FID (None: ``fid`` is it)
    confirmed_fid: float | None = None  # on the confirmation noise (None: not confirmed)
    # how far another draw of the confirmation's images could move it (``metrics.fid_spread``;
    # None: not confirmed, or confirmed before spreads were measured)
    confirmed_spread: float | None = None

    @property
    def expected(self) -> bool:
        """Ranked by an expected FID: not confirmed, its search FID raised by the study's
        ``expected_rise``."""
        return (self.confirmed_fid is None and self.search_fid is not None
                and self.fid != self.search_fid)

    @property
    def pooled(self) -> bool:
        """Ranked by the mean of its search and confirmed FIDs (``pooled_baseline``)."""
        return (self.confirmed_fid is not None and self.search_fid is not None
                and self.fid != self.confirmed_fid)

    @property
    def searched(self) -> float:
        """Its FID on the search's noise."""
        return self.fid if self.search_fid is None else self.search_fid

    @property
    def skipped(self) -> int:
        return sum(len(s) for s in self.skip)

    def share(self, full_gflops: float | None) -> float | None:
        """Its GFLOPs as a share of the full network's."""
        return None if self.gflops is None or not full_gflops else self.gflops / full_gflops

    def as_dict(self, full_gflops: float | None = None) -> dict:
        return {"stage": self.stage, "study": self.study, "trial": self.trial,
                "timesteps": self.timesteps, "skip": self.skip, "fid": self.fid,
                "search_fid": self.searched,
                "confirmed_fid": self.confirmed_fid, "confirmed_spread": self.confirmed_spread,
                **({"pooled": True} if self.pooled else {}),
                "gflops": self.gflops, "gflops_share": self.share(full_gflops),
                **({"rules": self.rules} if self.rules else {})}

    def describe(self, full_gflops: float | None = None) -> str:
        """``stage 2 trial 57: [491, 381, 258, 101], FID 8.142, 0.1293 GFLOPs/image (99.8% of
        the full network), 1 layer-step skipped``"""
        text = f"stage {self.stage} trial {self.trial}: {self.timesteps}"
        if self.rules:
            text += f" ({describe_solver(self.rules, len(self.timesteps))})"
        text += f", FID {self.fid:.3f}"
        spread = "" if self.confirmed_spread is None else f" ± {self.confirmed_spread:.3f}"
        if self.pooled:
            text += (f" (the mean of confirmed {self.confirmed_fid:.3f}{spread} and search "
                     f"{self.search_fid:.3f})")
        elif self.confirmed_fid is not None and self.search_fid is not None:
            text += f"{spread} confirmed (search {self.search_fid:.3f})"
        elif self.expected:
            text += f" expected (search {self.search_fid:.3f}, not confirmed)"
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
    """What a two-stage search found (see the module's docstring); ``study_result`` makes it.
    ``export_rule`` is the rule it was asked to export by; ``budget`` the budget that rule
    applies (its own, else the one stage 2 ran with; None: none)."""

    stage1: optuna.Study
    stage2: optuna.Study | None
    config: dict
    full_gflops: float | None
    uniform: Point | None
    best: Point
    front: list[Point]  # thinned, cheapest first (so the best is last)
    export_rule: ExportRule = DEFAULT_RULE
    min_saving: float = MIN_SAVING
    counts: dict = field(default_factory=dict)  # stage number -> trial_counts
    budget: float | None = None
    dp: Point | None = None  # the trajectory DP's spacing, where the study has one
    set_aside: list[Point] = field(default_factory=list)  # not offered (``offered``), lowest first

    @property
    def name(self) -> str:
        return self.stage1.study_name

    @property
    def fid_tolerance(self) -> float:
        return self.export_rule.fid_tolerance

    @property
    def stage2_budget(self) -> float | None:
        """The ``--max-gflops`` stage 2 was run with (None: none)."""
        return _stage2_budget(self.stage2)

    @property
    def fast(self) -> Point:
        """The cheapest front point within the FID tolerance of the best (and no worse than
        the uniform schedule) by more than the noise of both FIDs (``noise_margin``); the best
        itself where nothing cheaper is that good."""
        limit = export_limit(self.best.fid, None if self.uniform is None else self.uniform.fid,
                             self.fid_tolerance)
        return next(p for p in self.front
                    if p is self.best or p.fid + noise_margin(p, self.best) <= limit)

    def choose(self) -> Point:
        """What ``export`` writes: ``fast``, or with a budget (``budget``) the lowest-FID front
        point within it. A budget that buys nothing as good as the uniform schedule is refused
        in one line naming the cheapest point that is, and the budget that buys it. Worked
        out once per result: every listing of it (``exported``, ``as_dict``) shows the same."""
        choice = self._choice
        if isinstance(choice, UsageError):
            raise UsageError(str(choice))
        return choice

    @cached_property
    def _choice(self) -> Point | UsageError:
        try:
            return self._choose()
        except UsageError as refused:
            return refused

    def _choose(self) -> Point:
        budget = self.budget
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

    def exported(self) -> tuple[Point | None, str]:
        """(``choose()``, its rule) for a listing of the result. A budget the export rule asks
        for that buys nothing good is refused, as ``choose`` refuses it; the budget stage 2
        ran with is not asked for, so the listing goes on: (None, why not)."""
        if self.export_rule.max_gflops is not None:
            return self.choose(), self.rule()
        try:
            return self.choose(), self.rule()
        except UsageError as refused:
            return None, str(refused)

    def rule(self) -> str:
        """How ``choose`` picks, in words."""
        if self.budget is not None:
            return f"the lowest FID within {self.budget} GFLOPs/image"
        return (f"the cheapest within {self.fid_tolerance:.0%} of the best FID, by more than "
                "the confirmed FIDs' noise")

    def as_dict(self) -> dict:
        """The result as ``best --json`` and ``study --json`` print it (``export`` None, and
        ``export_refused`` why, where the budget stage 2 ran with buys nothing as good as the
        uniform schedule; an asked-for budget that buys nothing good is refused, as by
        ``choose``)."""
        full = self.full_gflops
        config = self.config
        summary = {
            "study": self.name,
            "stage2_study": self.stage2.study_name if self.stage2 is not None else None,
            **{key: config.get(key) for key in ("model", "steps", "solver", "noise_scale",
                                                "step_moves", "samples", "seed", "sampler",
                                                "model_weights")},
            "fid_features": self.stage1.user_attrs.get(FID_FEATURES_ATTR),
            "full_gflops": full,
            "fid_tolerance": self.fid_tolerance,
            "min_saving": self.min_saving,
            "best": self.best.as_dict(full),
            "export": None,
            "uniform": self.uniform.as_dict(full) if self.uniform is not None else None,
            "dp": self.dp.as_dict(full) if self.dp is not None else None,
            "front": [p.as_dict(full) for p in self.front],
            "set_aside": [p.as_dict(full) for p in self.set_aside],
            "trials": {f"stage{stage}": counts for stage, counts in self.counts.items()},
        }
        pick, rule = self.exported()
        if pick is not None:
            summary["export"] = pick.as_dict(full)
        else:
            summary["export_refused"] = rule
        if self.export_rule.max_gflops is not None:
            summary["max_gflops"] = self.export_rule.max_gflops
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


def export_limit(best_fid: float, uniform_fid: float | None,
                 fid_tolerance: float = FID_TOLERANCE) -> float:
    """The highest FID the export rule takes a cheaper point at: ``fid_tolerance`` above the
    best's, and no worse than the uniform schedule's (where the best itself is not)."""
    limit = best_fid * (1 + fid_tolerance)
    return limit if uniform_fid is None else min(limit, max(uniform_fid, best_fid))


def _ceil4(value: float) -> float:
    """A budget, printed to 4 decimals, that still admits ``value``."""
    return -int(-value * 10_000 // 1) / 10_000


def _stage2_budget(stage2: optuna.Study | None) -> float | None:
    if stage2 is None:
        return None
    return (stored_config(stage2) or {}).get("max_gflops")


def study_result(study: optuna.Study, export_rule: ExportRule = DEFAULT_RULE,
                 min_saving: float = MIN_SAVING) -> StudyResult:
    """The result of the search ``study`` belongs to (a stage-1 or a stage-2 name): both stages'
    complete trials, with the definitions of the module's docstring; its exported point chosen
    by ``export_rule``. A study with no complete trial, or one not made by autodiff_optuna, is
    one UsageError line."""
    if not 0 <= min_saving < 1:
        raise ValueError(f"the minimum saving must be in [0, 1), got {min_saving}")
    stage1, stage2 = linked_studies(study)
    config = check_config(stage1)
    full = record.full_gflops(stage1.user_attrs, stage2 and stage2.user_attrs)
    points = scored_points(stage1, stage2, config["steps"], full)
    if not points:
        raise UsageError(f"study {stage1.study_name!r} has no complete trial yet")
    kept = offered(points)
    offered_keys = {(p.stage, p.trial) for p in kept}  # by trial, not every field compared
    set_aside = sorted((p for p in points if (p.stage, p.trial) not in offered_keys), key=ranked)
    points = kept
    best = min(points, key=ranked)
    front = thin(pareto(points), min_saving * full) if full else [best]
    stage1_points = {p.trial: p for p in points if p.stage == 1}
    uniform, dp = (None if t is None else stage1_points[t.number]
                   for t in (uniform_trial(stage1), dp_trial(stage1)))
    counts = {1: trial_counts(stage1)}
    if stage2 is not None:
        counts[2] = trial_counts(stage2)
    budget = export_rule.max_gflops
    if budget is None:  # none asked for: the budget stage 2 ran with, if any
        budget = _stage2_budget(stage2)
    return StudyResult(stage1, stage2, config, full, uniform, best, front, export_rule,
                       min_saving, counts, budget, dp, set_aside)


def check_config(stage1: optuna.Study) -> dict:
    """The stage-1 study's configuration (``stored_config``); one line, rather than a traceback
    later, for a study not made by autodiff_optuna or a configuration another program (or a
    hand) wrote with missing fields or values of the wrong type (one with our marker)."""
    attrs = stage1.user_attrs
    if record.is_ours(attrs):
        return stored_config(stage1)
    if not record.is_marked(attrs):
        raise UsageError(f"study {stage1.study_name!r} was not made by autodiff_optuna")
    bad = [problem.removeprefix(f"{CONFIG_ATTR}.") for problem in record.schema_problems(attrs)]
    raise UsageError(f"study {stage1.study_name!r}: its stored configuration is malformed "
                     f"({', '.join(bad)} missing or of the wrong type)")


def linked_studies(study: optuna.Study) -> tuple[optuna.Study, optuna.Study | None]:
    """(stage 1, its stage 2 or None) of the search ``study`` is part of."""
    if record.stage_of(study.user_attrs) != 2:
        return study, linked_stage2(study)
    storage = storage_of(study)
    name = study.user_attrs.get(record.STAGE1_ATTR)
    if not isinstance(name, str) or name not in optuna.get_all_study_names(storage):
        raise UsageError(f"stage-2 study {study.study_name!r}: its stage-1 study {name!r} "
                         "is not in this storage")
    return optuna.load_study(study_name=name, storage=storage), study


def linked_stage2(stage1: optuna.Study) -> optuna.Study | None:
    """The stage-2 study ``stage1`` links to, if it is there and links back (a study of
    another program, or of another search, under that name is not taken for it)."""
    name = record.linked_stage2_name(stage1.user_attrs)
    storage = storage_of(stage1)
    if name is None or name not in optuna.get_all_study_names(storage):
        return None
    stage2 = optuna.load_study(study_name=name, storage=storage)
    return stage2 if _is_stage2_of(stage2, stage1.study_name) else None


def _is_stage2_of(study: optuna.Study, stage1_name: str) -> bool:
    attrs = study.user_attrs
    return (record.is_ours(attrs) and record.stage_of(attrs) == 2
            and attrs[record.STAGE1_ATTR] == stage1_name and len(study.directions) == 2)


def scored_points(stage1, stage2, steps: int, full: float | None) -> list[Point]:
    """Every complete trial of both stages as a Point (stage 1's at the full network's cost),
    an unconfirmed one's FID raised by ``expected_rise``, the uniform baseline's the mean of its
    two FIDs (``pooled_baseline``). A stage-2 trial over the budget stage
    2 was run with is one too: the budget steered the search, and ``choose`` applies it to what
    is exported. Stage 1's elites carried into stage 2 are stage 1's points (the same
    candidates, scored there), so they appear once."""
    confirmed, complete = confirmations(stage1), complete_trials(stage1)
    points = [_point(stage1, 1, t, full, steps, confirmed) for t in complete]
    if stage2 is not None:
        points += stage2_points(stage2, steps, carried=False)
    rise = expected_rise(points)
    points = [p if p.confirmed_fid is not None or not rise
              else dataclasses.replace(p, fid=p.fid + rise) for p in points]
    uniforms = uniform_trials(stage1, complete)  # the trials read above, not read again
    if len(uniforms) != 1:  # none, or the best of several solvers': chosen for its luck too
        return points
    return [pooled_baseline(p) if p.stage == 1 and p.trial == uniforms[0].number else p
            for p in points]


def ranked(point: Point) -> tuple:
    """The order ``best`` is the first of: the lowest FID, then the cheaper, then stage 1's."""
    return (point.fid, point.gflops or 0.0, point.stage, point.trial)


def offered(points: list[Point]) -> list[Point]:
    """``points`` (``scored_points``) less the stage-2 points the two noises disagree on:
    confirmed, and ranked ahead of stage 1's best by their confirmed FID, but behind it on the
    search's noise, where both were scored on the same images. (An unconfirmed one is confirmed
    first, as the best.) Stage 2 confirms every point its front may name, and the lowest of several
    confirmed FIDs is partly the luck of the confirmation's draw, as the lowest search FID was the
    search's. A stage-2 point that beat stage 1's best on the confirmation's noise alone scored
    2.66 held out against its 1.87 (BENCHMARKS.md, "A stage-2 point ahead on one noise only").
    Nothing is lost: such a point stays a trial of the study (the report plots it, ``best`` names
    it), it is only not offered as a result."""
    stage1 = [p for p in points if p.stage == 1]
    if not stage1:
        return points
    lead = min(stage1, key=ranked)
    return [p for p in points if not (p.stage == 2 and p.confirmed_fid is not None
                                       and ranked(p) < ranked(lead)
                                       and p.searched >= lead.searched)]


def pooled_baseline(point: Point) -> Point:
    """The uniform baseline ranked by the mean of its search and confirmed FIDs (once both are
    finite). Every other confirmed point was picked from many for its low search FID, which is
    therefore biased low (the winner's curse) and only its confirmed FID counts. The baseline
    is queued first and confirmed whatever it scores: its search FID is a second unbiased
    measurement on as many images, and the mean halves the variance. (Where the study searches
    the solver, the baseline is the best of uniform with each fixed solver on the search's
    noise, picked for that noise's luck as the rest were: ``scored_points`` leaves it alone.)
    By its confirmed FID alone, one lucky draw of the confirmation's noise named it over a
    schedule that beat it on the two streams together, 2.16 against 3.28 held out
    (BENCHMARKS.md, "The baseline's two FIDs")."""
    if point.confirmed_fid is None or point.search_fid is None or not (
            math.isfinite(point.confirmed_fid) and math.isfinite(point.search_fid)):
        return point
    return dataclasses.replace(point, fid=(point.search_fid + point.confirmed_fid) / 2)


MIN_RISES = 3  # confirmed candidates it takes to expect a rise: fewer say little about the rest


def expected_rise(points: list[Point]) -> float:
    """How much an unconfirmed candidate's FID is expected to rise from the search's noise to
    fresh noise: the median rise of the confirmed ones (0 until ``MIN_RISES`` are, or where
    they fell). Those were confirmed for scoring low on the search's noise, as every
    unconfirmed candidate that could rank beside them did, and all share that noise's draw."""
    rises = [p.confirmed_fid - p.search_fid for p in points
             if p.confirmed_fid is not None and p.search_fid is not None
             and math.isfinite(p.confirmed_fid) and math.isfinite(p.search_fid)]
    return max(0.0, statistics.median(rises)) if len(rises) >= MIN_RISES else 0.0


def stage2_points(stage2: optuna.Study, steps: int, carried: bool = True) -> list[Point]:
    """Stage 2's complete trials as Points (``carried``: with stage 1's elites it holds)."""
    confirmed = confirmations(stage2)
    return [_point(stage2, 2, t, None, steps, confirmed) for t in complete_trials(stage2)
            if carried or not is_carried(t)]


def confirmed_fids(study: optuna.Study) -> dict[int, float]:
    """Trial number -> its confirmed FID, for the trials of ``study`` that ``search.confirm``
    re-scored (kept as study attributes: Optuna does not write to a finished trial)."""
    return confirmations(study)[0]


def confirmations(study: optuna.Study) -> tuple[dict[int, float], dict[int, float]]:
    """(``confirmed_fids``, trial number -> its confirmed FID's spread), one read."""
    attrs = study.user_attrs
    return (_per_trial(attrs, record.CONFIRMED_ATTR),
            _per_trial(attrs, record.CONFIRMED_SPREAD_ATTR))


def _per_trial(attrs: dict, name: str) -> dict[int, float]:
    prefix = f"{name}:"
    return {int(key[len(prefix):]): value for key, value in attrs.items()
            if key.startswith(prefix) and key[len(prefix):].isdigit()
            and isinstance(value, (int, float))}


# how many standard deviations of the difference of two confirmed FIDs a cheaper point must
# clear the FID tolerance by to be exported in place of the best
NOISE_SIGMAS = 1.0


def noise_margin(point: Point, best: Point) -> float:
    """What ``point``'s FID must clear the tolerance by, beyond the best's: ``NOISE_SIGMAS``
    standard deviations of the difference of their confirmed FIDs (each on its own draw of
    noise as far as the bootstrap can tell: the root of the summed variances); 0 where either
    has no spread (a study confirmed before spreads were measured, or not confirmed)."""
    if point.confirmed_spread is None or best.confirmed_spread is None:
        return 0.0
    return NOISE_SIGMAS * math.hypot(point.confirmed_spread, best.confirmed_spread)


def stage2_front_size(stage2: optuna.Study, min_saving: float = MIN_SAVING) -> int:
    """The points of the result's front so far, as stage 2 runs: its own trials suffice, since
    it holds stage 1's best (carried with its stage-1 scores) from the start."""
    attrs = stage2.user_attrs  # one storage read per progress line, not two
    full = attrs.get(FULL_GFLOPS_ATTR)
    config = attrs.get(CONFIG_ATTR)
    steps = config.get("steps", 0) if isinstance(config, dict) else 0
    points = stage2_points(stage2, steps)
    return len(thin(pareto(points), min_saving * full)) if full and points else 0


def _point(study, stage: int, trial: FrozenTrial, full: float | None, steps: int,
           confirmed: tuple[dict, dict] | None = None) -> Point:
    """``confirmed``: ``confirmations(study)``, read once by a caller that makes many."""
    if stage == 1:
        skip, gflops = [[] for _ in range(steps)], full
    else:
        skip, gflops = trial.user_attrs.get(SKIP_ATTR), objectives.gflops(trial)
    fids, spreads = confirmations(study) if confirmed is None else confirmed
    search_fid, confirmed_fid = objectives.fid(trial), fids.get(trial.number)
    return Point(stage, study.study_name, trial.number, trial.user_attrs.get(TIMESTEPS_ATTR),
                 skip, search_fid if confirmed_fid is None else confirmed_fid, gflops,
                 trial.user_attrs.get(RULES_ATTR), search_fid, confirmed_fid,
                 None if confirmed_fid is None else spreads.get(trial.number))


def pareto(points: list[Point]) -> list[Point]:
    """The points no other is better than in both FID and GFLOPs, cheapest first. Of equal
    points the first stage's is kept."""
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
    stored = result.stored()
    for study in filter(None, (result.stage1, result.stage2)):
        study.set_user_attr(RESULT_ATTR, stored)


def study_listing(storage) -> list[dict]:
    """Every search in a storage, a row each (a stage-2 study is one search with its stage 1):
    model, steps, each stage's trial counts and how far it got, best and uniform FID. A study
    not made by autodiff_optuna is listed as foreign, and one a killed study command left half
    made as such, by name and trial counts alone."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    links = {s.study_name: record.linked_stage2_name(s.user_attrs) for s in summaries
             if record.is_ours(s.user_attrs) and record.stage_of(s.user_attrs) == 1}

    def listed_with_its_stage1(summary) -> bool:
        attrs = summary.user_attrs
        return (record.is_ours(attrs) and record.stage_of(attrs) == 2
                and links.get(attrs[record.STAGE1_ATTR]) == summary.study_name)

    return [_listing_row(optuna.load_study(study_name=s.study_name, storage=storage))
            for s in summaries if not listed_with_its_stage1(s)]


def _listing_row(study: optuna.Study) -> dict:
    row = {"study": study.study_name, "foreign": True, "half_made": False, "model": None,
           "steps": None, "stages": [], "trials": {"other": trial_counts(study)}, "state": {},
           "best_fid": None, "uniform_fid": None}
    if not record.is_ours(study.user_attrs):
        return {**row, "foreign": False, "half_made": True} if half_made(study) else row
    config = stored_config(study)
    stage = record.stage_of(study.user_attrs)
    stages = {stage: study}
    if stage == 1 and (stage2 := linked_stage2(study)) is not None:
        stages[2] = stage2
    row = {**row, "foreign": False, "model": config["model"], "steps": config["steps"],
           "stages": list(stages),
           "trials": {f"stage{k}": trial_counts(s) for k, s in stages.items()},
           "state": {f"stage{k}": stage_state(s) for k, s in stages.items()}}
    try:
        result = study_result(study)
    except UsageError:  # no complete trial yet, or a stage 2 whose stage 1 is gone
        return row
    return {**row, "best_fid": result.best.fid,
            "uniform_fid": None if result.uniform is None else result.uniform.fid}


def half_made(study: optuna.Study) -> bool:
    """One of ours that a process killed while making it left without its configuration (the
    marker is written first), holding no trial that ever ran: its next study run makes it
    again, and ``delete`` may remove it."""
    return (record.is_marked(study.user_attrs) and CONFIG_ATTR not in study.user_attrs
            and not _ever_ran(study))


def _ever_ran(study: optuna.Study) -> bool:
    # carried stage-1 trials are written at creation: they hold nothing this study computed
    return any(t.state != TrialState.WAITING and not is_carried(t)
               for t in study.get_trials(deepcopy=False))


def stage_state(study: optuna.Study) -> dict:
    """How far a stage got: its evaluated trials (complete, or stopped early: what counts
    towards ``--trials``), the target its last run aimed at (None: not recorded), whether it
    reached it, and (stage 2) why it ended before it (``search.patience``: finished too)."""
    target = record.target_of(study.user_attrs)
    evaluated = n_evaluated(study)
    stopped = study.user_attrs.get(record.STAGE2_STOPPED_ATTR)
    stopped = stopped if isinstance(stopped, dict) and stopped.get("evaluated") == evaluated \
        else None
    return {"evaluated": evaluated, "target": target,
            "finished": target is not None and (evaluated >= target or stopped is not None),
            "stopped": stopped}


def deletion_plan(storage, name: str) -> list[optuna.Study]:
    """What ``delete NAME`` removes, in the order to remove them: a stage-1 study's stage 2
    first, then the stage-1 study, so that a delete killed part-way never strands a stage 2
    (and a rerun finds ``<NAME>-stage2`` that names ``NAME`` as its stage 1 even when ``NAME``
    is gone); a stage-2 name, that study alone. Only studies of ours (or one a killed study
    command left half made): a missing or foreign study is one UsageError line."""
    names = optuna.get_all_study_names(storage)
    orphan = _stage2_by_name(storage, name, names)
    if name not in names:
        if orphan is not None:
            return [orphan]
        load_existing_study(name, storage)  # says which studies there are
    study = optuna.load_study(study_name=name, storage=storage)
    if half_made(study):  # nothing ran in it, and nothing links to it
        return [study]
    if not record.is_ours(study.user_attrs):
        raise UsageError(f"study {name!r} was not made by autodiff_optuna: not deleted "
                         "(Optuna's own `optuna delete-study` deletes any study)")
    if record.stage_of(study.user_attrs) == 2:
        return [study]
    stage2 = linked_stage2(study) or orphan
    return ([stage2] if stage2 is not None else []) + [study]


def _stage2_by_name(storage, stage1_name: str, names: list[str]) -> optuna.Study | None:
    """``<stage1_name>-stage2``, if it is there and a stage 2 of ours naming that stage 1 (or
    one a killed study command left half made)."""
    name = f"{stage1_name}-stage2"
    if name not in names:
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    half = half_made(study) and study.user_attrs.get(record.STAGE1_ATTR) == stage1_name
    return study if half or _is_stage2_of(study, stage1_name) else None


def live_trials(studies: list[optuna.Study]) -> list[str]:
    """The RUNNING trials of ``studies`` whose worker still beats (``trial 7 of 'x-k4'``), by
    their storage's heartbeat grace period; one that never beat counts as live, as Optuna's
    own stale-trial check leaves it running."""
    live = []
    for study in studies:
        stale = stale_trial_ids(study)
        live += [f"trial {t.number} of {study.study_name!r}"
                 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if trial_id(t) not in stale]
    return live


def heartbeat_of(studies: list[optuna.Study], default: int) -> int:
    """The longest heartbeat interval the workers of ``studies`` recorded (``default``: none
    recorded, a study made before they were)."""
    return max(record.heartbeat_of(s.user_attrs, default) for s in studies)
