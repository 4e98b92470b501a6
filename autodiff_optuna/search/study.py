"""The two-stage search as Optuna studies.

Stage 1 searches the time steps alone with the full network (one objective: FID). Stage 2 is a
second study, linked to the first, that searches the time steps jointly with a per-step layer-skip
mask on two objectives, FID and GFLOPs per image, and starts from stage 1's elites (full network)
as real members of its first generation. Both are driven by the ``EvolutionarySampler``.
"""

import time
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.storages import RetryFailedTrialCallback, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.metrics.flops import LayerCosts, layer_costs
from autodiff_optuna.models import load_model, load_scorer
from autodiff_optuna.reporting.progress import ProgressPrinter
from autodiff_optuna.sampling import SEARCH, draw, standard_spacings
from autodiff_optuna.search.config import OPTUNA_SAMPLERS, SearchConfig, code_version
from autodiff_optuna.search import fidelity
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.objective import score_schedule
from autodiff_optuna.storage import open_storage, redact

CONFIG_ATTR = "config"
MAX_CONSECUTIVE_FAILURES = 20
MAX_RETRIES = 3
# for the storage: a trial whose worker died is queued again, in its generation (its system
# attrs travel with it), up to MAX_RETRIES times
with warnings.catch_warnings():  # experimental in Optuna; relied on knowingly
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    retry_stale_trial = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


@dataclass
class SearchContext:
    """Everything a search needs, built once per process."""

    config: SearchConfig
    model: object
    scorer: object
    spacings: dict
    costs: LayerCosts

    @classmethod
    def build(cls, config: SearchConfig, device: str = "cpu",
              options=None) -> "SearchContext":
        """``options``: a ``models.ModelOptions`` (--checkpoint, --ref-stats, ...), or None."""
        model = load_model(config.model, device, options)
        config.check(model.num_train_timesteps)
        scorer = load_scorer(config.model, device, options)
        scorer.check_sample_count(config.samples)
        fidelity.check(config.samples, config.min_samples, scorer)
        spacings = standard_spacings(config.steps, model.num_train_timesteps,
                                     alphas_cumprod(model))
        return cls(config, model, scorer, spacings, layer_costs(model))

    def space(self, stage: int) -> CandidateSpace:
        layers = self.costs.layers if stage == 2 else ()
        return CandidateSpace(self.config.steps, self.model.num_train_timesteps, layers)

    @property
    def full_gflops(self) -> float:
        return self.costs.gflops([()] * self.config.steps)

    @property
    def min_gflops(self) -> float:
        """Every layer skipped at every step: what no candidate can go below."""
        return self.costs.gflops([self.costs.layers] * self.config.steps)


def alphas_cumprod(model) -> np.ndarray:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod.numpy()


def stage_config(ctx: SearchContext, stage: int, max_gflops: float | None) -> dict:
    """What defines a stage's study: a rerun must match it to continue the study."""
    attrs = {**ctx.config.as_attrs(), "stage": stage,
             "model_weights": ctx.model.fingerprint, "fid_features": ctx.scorer.name}
    if stage == 2:
        attrs["max_gflops"] = max_gflops
    return attrs


def _sampler(ctx: SearchContext, stage: int, initial: list[Candidate]) -> EvolutionarySampler:
    # stage 1 starts from the textbook spacings and random candidates (as NSGA-II starts);
    # stage 2 from variations of stage 1's elites, and breeds without Parzen children: its
    # masks are bits a kernel over steps does not model (and it was measured without them)
    breeding = (dict(first_generation="random") if stage == 1
                else dict(first_generation="children", parzen_prob=0.0))
    return EvolutionarySampler(ctx.space(stage), population_size=ctx.config.population,
                               initial=initial, seed=ctx.config.seed + 1000 * (stage - 1),
                               **breeding)


def stage1_sampler(ctx: SearchContext, initial: list[Candidate]) -> optuna.samplers.BaseSampler:
    """The configured stage-1 sampler: ours, or one of ``OPTUNA_SAMPLERS``."""
    if ctx.config.sampler == "evolutionary":
        return _sampler(ctx, 1, initial)
    return OPTUNA_SAMPLERS[ctx.config.sampler](ctx.config)


def open_stage1(ctx: SearchContext, name: str, storage) -> optuna.Study:
    """Create or resume the stage-1 study. Its first trials are the standard spacings, queued
    once by whichever process creates the study, uniform (the baseline) first."""
    space = ctx.space(1)
    initial = [space.candidate(s) for s in ctx.spacings.values()]
    return _open(ctx, name, storage, 1, stage1_sampler(ctx, initial), ["minimize"],
                 first_trials=[(space.encode(c), {"spacing": spacing})
                               for spacing, c in zip(ctx.spacings, initial)],
                 extra_attrs={"spacings": {k: list(v) for k, v in ctx.spacings.items()}})


def load_stage1(ctx: SearchContext, name: str, storage) -> optuna.Study:
    """An existing stage-1 study, for ``--stage 2`` alone; its configuration must match."""
    from autodiff_optuna.storage import load_existing_study

    study = load_existing_study(name, storage, hint="run stage 1 first (--stage 1 or both)")
    _check_stored(study, stage_config(ctx, 1, None), 1, storage)
    return study


def open_stage2(ctx: SearchContext, stage1: optuna.Study, storage,
                max_gflops: float | None) -> optuna.Study:
    """Create or resume stage 2. Its first trials are stage 1's best distinct candidates (full
    network), queued once when the study is created."""
    if max_gflops is not None and not ctx.min_gflops <= max_gflops:
        raise UsageError(f"--max-gflops {max_gflops} is below what any candidate can cost "
                         f"({ctx.min_gflops:.4f} GFLOPs/image with every layer skipped)")
    ranked = sorted(complete_trials(stage1), key=lambda t: t.value)
    if not ranked:
        raise UsageError(f"stage-1 study {stage1.study_name!r} has no complete trial: "
                         "run stage 1 first")
    space = ctx.space(2)
    elites = list(dict.fromkeys(space.candidate(t.user_attrs["timesteps"]) for t in ranked))
    elites = elites[: max(2, ctx.config.population // 2)]
    name = f"{stage1.study_name}-stage2"
    study = _open(ctx, name, storage, 2, _sampler(ctx, 2, elites), ["minimize", "minimize"],
                  max_gflops=max_gflops,
                  first_trials=[(space.encode(c), {"stage1_elite": True}) for c in elites],
                  extra_attrs={"stage1_study": stage1.study_name,
                               "full_gflops": ctx.full_gflops,
                               "layers": list(ctx.costs.layers),
                               "layer_gflops_saved": {k: v / 1e9
                                                      for k, v in ctx.costs.saving.items()}})
    stage1.set_user_attr("stage2_study", name)
    return study


def _open(ctx, name, storage, stage, sampler, directions, max_gflops=None, extra_attrs=None,
          first_trials=()) -> optuna.Study:
    """Create the study, or load it and refuse a configuration that differs from the stored one.

    The configuration is written last: a second worker that finds the study waits for it, and
    then sees the study complete (its attributes and queued first trials)."""
    if isinstance(storage, str) or storage is None:
        storage = open_storage(storage)
    wanted = stage_config(ctx, stage, max_gflops)
    # multi-fidelity pruning needs one objective (Optuna's pruners rank a single value)
    pruner = fidelity.make_pruner(ctx.config.min_samples if stage == 1 else None)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    directions=directions, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        _wait_for_config(study)
        _check_stored(study, wanted, stage, storage)
        return study
    try:
        study.set_user_attr("stage", stage)
        study.set_user_attr("code_version", code_version())
        study.set_user_attr("fid_features", ctx.scorer.name)
        for key, value in (extra_attrs or {}).items():
            study.set_user_attr(key, value)
        for params, user_attrs in first_trials:
            study.enqueue_trial(params, user_attrs=user_attrs)
        study.set_user_attr(CONFIG_ATTR, wanted)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)  # no half-created study
        raise
    return study


def _wait_for_config(study: optuna.Study, seconds: float = 30.0) -> None:
    """Another worker may have created the study a moment ago and still be writing it."""
    deadline = time.monotonic() + seconds
    while CONFIG_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)


def stored_config(study: optuna.Study) -> dict | None:
    """The configuration a study was made with (None: not made by autodiff_optuna). A field
    it lacks was added since it was made: it ran with that field's default."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    return None if stored is None else {**SearchConfig.defaults(), **stored}


def _check_stored(study: optuna.Study, wanted: dict, stage: int, storage) -> None:
    stored = stored_config(study)
    where = f"study {study.study_name!r} in {redact(storage.url)}"
    if stored is None:
        raise UsageError(f"{where} was not made by autodiff_optuna; choose another --name")
    diffs = [f"{key}: stored {stored.get(key)!r}, requested {value!r}"
             for key, value in wanted.items() if stored.get(key) != value]
    if diffs:
        raise UsageError(f"{where} exists with another configuration (" + "; ".join(diffs)
                         + "); rerun with the stored values or choose a new --name")


def make_objective(ctx: SearchContext, stage: int, target: int | None = None,
                   batch_size: int | None = None, score=None, max_gflops: float | None = None,
                   interrupted: dict | None = None):
    """The trial function. ``score(candidate) -> FID`` defaults to sampling the model on the
    study's fixed noise and scoring it (the storage benchmark passes a synthetic one).
    A Ctrl-C inside a trial leaves its number in ``interrupted["trial"]``."""
    batch = draw(ctx.model, ctx.config.samples, ctx.config.seed, SEARCH)
    space = ctx.space(stage)
    interrupted = interrupted if interrupted is not None else {}
    rungs = fidelity.rungs(ctx.config.samples, ctx.config.min_samples) if stage == 1 else []

    def score_candidate(candidate: Candidate, trial: optuna.Trial) -> float:
        if score is not None:
            return score(candidate)
        if rungs:
            return fidelity.score_in_rungs(trial, ctx.model, ctx.scorer, candidate, batch,
                                           ctx.config.solver, rungs, batch_size)
        return score_schedule(ctx.model, ctx.scorer, candidate.timesteps, batch,
                              ctx.config.solver, batch_size, skip=candidate.skip)

    def objective(trial: optuna.Trial):
        try:
            return evaluate(trial)
        except KeyboardInterrupt:
            interrupted["trial"] = trial.number
            raise

    def evaluate(trial: optuna.Trial):
        dists = space.distributions()
        params = {name: trial.suggest_int(name, d.low, d.high) for name, d in dists.items()}
        candidate = space.decode(params)
        # before sampling, the study as the sampler just read it: saves a storage read per
        # trial. The snapshot can only be behind (a trial it shows running may have stopped
        # since, never the reverse), so the surplus check is at worst stricter; the check after
        # sampling reads afresh, and alone keeps racing twins from both completing.
        _check_concurrent_workers(trial, space, candidate, target, fresh=False)
        gflops = ctx.costs.gflops(candidate.skip)
        trial.set_user_attr("timesteps", list(candidate.timesteps))
        if stage == 2:
            trial.set_user_attr("skip", [list(s) for s in candidate.skip])
            trial.set_user_attr("gflops", gflops)
            if max_gflops is not None:  # <= 0 is feasible; NSGA-II ranks infeasible ones last
                trial.set_constraint("gflops", gflops - max_gflops)
        try:
            fid = score_candidate(candidate, trial)
        except FIDError as err:
            trial.set_user_attr("fail_reason", str(err))
            raise
        except optuna.TrialPruned:  # stopped early by the pruner: it counts towards the target
            _stop_at_target(trial, trial.study.get_trials(deepcopy=False), target)
            raise
        live = _check_concurrent_workers(trial, space, candidate, target=None)  # a twin won?
        _stop_at_target(trial, live, target)
        return (fid, gflops) if stage == 2 else fid

    return objective


def _stop_at_target(trial: optuna.Trial, trials: list[FrozenTrial], target: int | None) -> None:
    """Stop the study when this trial completes its target (MaxTrialsCallback's job, without
    another read of the study)."""
    number = trial.number
    others = sum(fidelity.is_evaluated(t) for t in trials if t.number != number)
    if target is not None and others + 1 >= target:
        trial.study.stop()


def _check_concurrent_workers(trial: optuna.Trial, space: CandidateSpace, candidate: Candidate,
                              target: int | None, fresh: bool = True) -> list[FrozenTrial]:
    """Prune a trial that another worker makes redundant.

    - Surplus (checked before sampling): the trials numbered before it that are finished,
      running or queued already make up the target. Trial numbers come from the storage, so the
      study ends with exactly ``target`` complete trials whatever the workers' timing.
    - Duplicate (checked before and after sampling): another trial with the same candidate is
      complete, or running with a lower number. Every trial writes its parameters before its
      first check, so of two racing twins at most one completes. (Twins are found by their
      canonical parameters, which the EvolutionarySampler always writes; a generic sampler's
      non-canonical twin of a candidate is not caught.)
    """
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    # not fresh: the snapshot Optuna caches for this trial's sampler (read after the trial was
    # created, so it holds every trial numbered before it), or a fresh read if there is none
    trials = (trial.study.get_trials(deepcopy=False, states=states) if fresh else
              trial.study._get_trials(deepcopy=False, states=states, use_cache=True))
    live = [t for t in trials if t.state != TrialState.PRUNED or fidelity.is_evaluated(t)]
    number = trial.number  # a property chain: read once, not once per stored trial
    if target is not None and sum(t.number < number for t in live) >= target:
        trial.set_user_attr("surplus", "the target was reached by other workers")
        trial.study.stop()
        raise optuna.TrialPruned("surplus")
    # the sampler writes canonical parameters, so a twin's are equal to the letter (a dict
    # comparison first: this runs twice per trial over the whole study, and twins are rare)
    params = space.encode(candidate)
    for t in live:
        if t.params != params or t.number == number or t.state == TrialState.WAITING:
            continue
        if fidelity.is_evaluated(t) or t.number < number:
            trial.set_user_attr("duplicate_of", t.number)
            raise optuna.TrialPruned(f"duplicate of trial {t.number}")
    return live


class _StopOnFailures:
    """A model or metric that fails every trial must not loop forever."""

    def __init__(self):
        self.count = 0
        self.last_reason = ""

    def __call__(self, study, trial):
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        self.last_reason = trial.user_attrs.get("fail_reason", self.last_reason)
        if self.count >= MAX_CONSECUTIVE_FAILURES:
            study.stop()


def run(ctx: SearchContext, study: optuna.Study, trials: int, progress: bool = True,
        batch_size: int | None = None, score=None, callbacks=(),
        max_gflops: float | None = None) -> None:
    """Run until ``trials`` candidates are evaluated: COMPLETE trials, plus those the
    multi-fidelity pruner stopped early (a rerun resumes).

    Other workers may stop this one early (their running trials make up the target); it then
    waits for them, and goes on if a trial of theirs failed or its worker died."""
    stage = study.user_attrs.get("stage", 1)
    failures = _StopOnFailures()
    callbacks = [failures, *callbacks]  # the objective stops the study at the target
    if progress:
        callbacks.append(ProgressPrinter(trials, label=f"stage {stage}"))
    interrupted: dict = {}
    objective = make_objective(ctx, stage, trials, batch_size, score, max_gflops, interrupted)
    while fidelity.n_evaluated(study) < trials:
        try:
            study.optimize(objective, callbacks=callbacks, catch=(FIDError,))
        except KeyboardInterrupt:
            _requeue_interrupted(study, interrupted.get("trial"), ctx.space(stage).names)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker's heartbeat check failed this (slow) trial and queued it again
        if failures.count >= MAX_CONSECUTIVE_FAILURES:
            raise UsageError(f"{failures.count} trials in a row failed (last: "
                             f"{failures.last_reason or 'see the trials'}); the study is kept")
        _wait_for_other_workers(study, progress)


def _wait_for_other_workers(study: optuna.Study, progress: bool, poll: float = 1.0) -> None:
    """Wait while trials of other workers run; a dead worker's trial is failed (and queued
    again) by the heartbeat check once its beats stop."""
    import sys

    from optuna.storages import fail_stale_trials

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running and progress:
        print(f"waiting for {len(running)} running trial(s) of other workers (a killed worker's "
              "trial is retried once its heartbeat expires)", file=sys.stderr, flush=True)
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_stale_trials(study)
        time.sleep(poll)


def _requeue_interrupted(study: optuna.Study, number: int | None, names) -> None:
    """Optuna has failed the trial Ctrl-C interrupted: queue its candidate for the resume."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL and all(n in trial.params for n in names):
        RetryFailedTrialCallback(max_retry=MAX_RETRIES)(study, trial)


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


def pareto_front(stage2: optuna.Study) -> list[FrozenTrial]:
    """Stage 2's feasible Pareto front of FID against GFLOPs, cheapest first."""
    # best_trials holds the feasible front only
    return sorted(stage2.best_trials, key=lambda t: (t.values[1], t.values[0]))


def pareto_point(trial: FrozenTrial) -> dict:
    """A stage-2 trial as ``best --json`` lists it in its ``pareto`` front."""
    return {"timesteps": trial.user_attrs["timesteps"], "skip": trial.user_attrs["skip"],
            "fid": trial.values[0], "gflops": trial.values[1], "trial": trial.number}



def best_summary(study: optuna.Study) -> dict:
    """The best candidate of a stage-1 study, its baseline and, when it has a stage 2, the
    Pareto front of FID against GFLOPs, as ``best --json`` prints it."""
    if study.user_attrs.get("stage", 1) == 2:
        raise UsageError(f"{study.study_name!r} is a stage-2 study; ask for its stage-1 study "
                         f"{study.user_attrs.get('stage1_study')!r}")
    complete = complete_trials(study)
    if not complete:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    config = stored_config(study) or {}
    best = min(complete, key=lambda t: t.value)
    baseline = uniform_trial(study)
    summary = {
        "study": study.study_name,
        "model": config.get("model"),
        "steps": config.get("steps"),
        "solver": config.get("solver"),
        "timesteps": best.user_attrs["timesteps"],
        "fid": best.value,
        "trial": best.number,
        "baseline_timesteps": uniform_timesteps(study),
        "baseline_fid": baseline.value if baseline is not None else None,
        "n_complete": len(complete),
        "samples": config.get("samples"),
        "seed": config.get("seed"),
        "sampler": config.get("sampler"),
        "model_weights": config.get("model_weights"),
        "fid_features": study.user_attrs.get("fid_features"),
    }
    stage2_name = study.user_attrs.get("stage2_study")
    if stage2_name:
        stage2 = optuna.load_study(study_name=stage2_name, storage=study._storage)
        summary.update(stage2_summary(stage2))
    return summary


def stage2_summary(stage2: optuna.Study) -> dict:
    return {
        "stage2_study": stage2.study_name,
        "full_gflops": stage2.user_attrs.get("full_gflops"),
        "max_gflops": stage2.user_attrs.get(CONFIG_ATTR, {}).get("max_gflops"),
        "stage2_n_complete": len(complete_trials(stage2)),
        "pareto": [pareto_point(t) for t in pareto_front(stage2)],
    }
