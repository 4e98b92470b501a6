"""The two-stage search as Optuna studies.

Stage 1 searches the time steps alone with the full network (one objective: FID). Stage 2 is a
second study, linked to the first, that searches the time steps jointly with a per-step layer-skip
mask on two objectives, FID and GFLOPs per image, and starts from stage 1's elites (full network)
as real members of its first generation. Both are driven by the ``EvolutionarySampler``.
"""

import time
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.metrics.flops import LayerCosts, layer_costs
from autodiff_optuna.models import load_model, load_scorer
from autodiff_optuna.reporting.progress import ProgressPrinter
from autodiff_optuna.sampling import SEARCH, draw, standard_spacings
from autodiff_optuna.search.config import SearchConfig, code_version
from autodiff_optuna.search.encoding import Candidate, CandidateSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.objective import score_schedule
from autodiff_optuna.storage import open_storage, redact

CONFIG_ATTR = "config"
MAX_CONSECUTIVE_FAILURES = 20


@dataclass
class SearchContext:
    """Everything a search needs, built once per process."""

    config: SearchConfig
    model: object
    scorer: object
    spacings: dict
    costs: LayerCosts

    @classmethod
    def build(cls, config: SearchConfig, device: str = "cpu") -> "SearchContext":
        model = load_model(config.model, device)
        config.check(model.num_train_timesteps)
        spacings = standard_spacings(config.steps, model.num_train_timesteps,
                                     alphas_cumprod(model))
        return cls(config, model, load_scorer(config.model), spacings, layer_costs(model))

    def space(self, stage: int) -> CandidateSpace:
        layers = self.costs.layers if stage == 2 else ()
        return CandidateSpace(self.config.steps, self.model.num_train_timesteps, layers)

    @property
    def full_gflops(self) -> float:
        return self.costs.gflops([()] * self.config.steps)


def alphas_cumprod(model) -> np.ndarray:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod.numpy()


def stage_config(ctx: SearchContext, stage: int, max_gflops: float | None) -> dict:
    attrs = ctx.config.as_attrs()
    if stage == 2:
        attrs["max_gflops"] = max_gflops
    return attrs


def _sampler(ctx: SearchContext, stage: int, initial: list[Candidate],
             max_gflops: float | None = None) -> EvolutionarySampler:
    constraints = None
    if stage == 2 and max_gflops is not None:
        def constraints(trial: FrozenTrial):  # <= 0 is feasible
            return (trial.user_attrs.get("gflops", float("inf")) - max_gflops,)
    return EvolutionarySampler(ctx.space(stage), population_size=ctx.config.population,
                               initial=initial, seed=ctx.config.seed + 1000 * (stage - 1),
                               constraints_func=constraints)


def open_stage1(ctx: SearchContext, name: str, storage_url: str | None) -> optuna.Study:
    space = ctx.space(1)
    initial = [space.candidate(s) for s in ctx.spacings.values()]
    uniform = space.candidate(ctx.spacings["uniform"])

    def first_trials(study):
        # the baseline every result is compared with, scored on the same noise
        study.enqueue_trial(space.encode(uniform), user_attrs={"spacing": "uniform"})

    return _open(ctx, name, storage_url, 1, _sampler(ctx, 1, initial), ["minimize"],
                 extra_attrs={"spacings": {k: list(v) for k, v in ctx.spacings.items()}},
                 first_trials=first_trials)


def load_stage1(ctx: SearchContext, name: str, storage) -> optuna.Study:
    """An existing stage-1 study, for ``--stage 2`` alone; its configuration must match."""
    from autodiff_optuna.storage import load_existing_study

    study = load_existing_study(name, storage, hint="run stage 1 first (--stage 1 or both)")
    _check_stored(study, stage_config(ctx, 1, None), 1, storage)
    return study


def open_stage2(ctx: SearchContext, stage1: optuna.Study, max_gflops: float | None) -> optuna.Study:
    """Stage 2, seeded with the best distinct candidates of stage 1 (full network)."""
    if stage1.user_attrs.get("stage", 1) != 1:
        raise UsageError(f"study {stage1.study_name!r} is not a stage-1 study")
    ranked = sorted(_complete(stage1), key=lambda t: t.value)
    if not ranked:
        raise UsageError(f"stage-1 study {stage1.study_name!r} has no complete trial: "
                         "run stage 1 first")
    space = ctx.space(2)
    elites = list(dict.fromkeys(space.candidate(t.user_attrs["timesteps"]) for t in ranked))
    elites = elites[: max(2, ctx.config.population // 2)]
    name = f"{stage1.study_name}-stage2"
    study = _open(ctx, name, stage1._storage, 2, _sampler(ctx, 2, elites, max_gflops),
                  ["minimize", "minimize"], max_gflops=max_gflops,
                  extra_attrs={"stage1_study": stage1.study_name,
                               "full_gflops": ctx.full_gflops,
                               "layers": list(ctx.costs.layers),
                               "layer_gflops_saved": {k: v / 1e9
                                                      for k, v in ctx.costs.saving.items()}})
    stage1.set_user_attr("stage2_study", name)
    return study


def _open(ctx, name, storage, stage, sampler, directions, max_gflops=None, extra_attrs=None,
          first_trials=None) -> optuna.Study:
    """Create the study, or load it and refuse a configuration that differs from the stored one."""
    if isinstance(storage, str) or storage is None:
        storage = open_storage(storage)
    wanted = stage_config(ctx, stage, max_gflops)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        _wait_for_config(study)
        _check_stored(study, wanted, stage, storage)
        return study
    try:
        study.set_user_attr(CONFIG_ATTR, wanted)
        study.set_user_attr("stage", stage)
        study.set_user_attr("code_version", code_version())
        study.set_user_attr("fid_features", ctx.scorer.name)
        for key, value in (extra_attrs or {}).items():
            study.set_user_attr(key, value)
        if first_trials:
            first_trials(study)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)  # no half-created study
        raise
    return study


def _wait_for_config(study: optuna.Study, seconds: float = 30.0) -> None:
    """Another worker may have created the study a moment ago and still be writing its
    configuration; a study without one after that is not ours."""
    deadline = time.monotonic() + seconds
    while CONFIG_ATTR not in study.user_attrs and not study.trials and time.monotonic() < deadline:
        time.sleep(0.2)


def _check_stored(study: optuna.Study, wanted: dict, stage: int, storage) -> None:
    stored = study.user_attrs.get(CONFIG_ATTR)
    where = f"study {study.study_name!r} in {redact(storage.url)}"
    if stored is None:
        raise UsageError(f"{where} was not made by autodiff_optuna; choose another --name")
    if study.user_attrs.get("stage", 1) != stage:
        raise UsageError(f"{where} is a stage-{study.user_attrs.get('stage')} study, "
                         f"not stage {stage}")
    diffs = [f"{key}: stored {stored.get(key)!r}, requested {value!r}"
             for key, value in wanted.items() if stored.get(key) != value]
    if diffs:
        raise UsageError(f"{where} exists with another configuration (" + "; ".join(diffs)
                         + "); rerun with the stored values or choose a new --name")


def make_objective(ctx: SearchContext, stage: int, target: int | None = None,
                   batch_size: int | None = None, score=None):
    """The trial function. ``score(candidate) -> FID`` defaults to sampling the model on the
    study's fixed noise and scoring it (the storage benchmark passes a synthetic one)."""
    batch = draw(ctx.model, ctx.config.samples, ctx.config.seed, SEARCH)
    space = ctx.space(stage)

    def sample_and_score(candidate: Candidate) -> float:
        return score_schedule(ctx.model, ctx.scorer, candidate.timesteps, batch,
                              ctx.config.solver, batch_size, skip=candidate.skip)

    score = score or sample_and_score

    def objective(trial: optuna.Trial):
        try:
            return _evaluate(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise

    def _evaluate(trial: optuna.Trial):
        dists = space.distributions()
        params = {name: trial.suggest_int(name, d.low, d.high) for name, d in dists.items()}
        candidate = space.decode(params)
        _check_concurrent_workers(trial, space, candidate, target)
        gflops = ctx.costs.gflops(candidate.skip)
        trial.set_user_attr("timesteps", list(candidate.timesteps))
        if stage == 2:
            trial.set_user_attr("skip", [list(s) for s in candidate.skip])
            trial.set_user_attr("gflops", gflops)
        try:
            fid = score(candidate)
        except FIDError as err:
            trial.set_user_attr("fail_reason", str(err))
            raise
        return (fid, gflops) if stage == 2 else fid

    return objective


MAX_RETRIES = 3


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial's candidate again, in the same generation (its system attrs travel
    with it), unless it has been retried MAX_RETRIES times. Used for trials whose worker died
    (the storage's heartbeat finds them) and for the trial a Ctrl-C interrupted."""
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES or not trial.params:
        return
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={**user_attrs, "retry_of": trial.number},
        system_attrs={**trial.system_attrs, "failed_trial": trial.number,
                      "retry_history": history}))


def _check_concurrent_workers(trial: optuna.Trial, space: CandidateSpace, candidate: Candidate,
                              target: int | None) -> None:
    """Prune a trial that another worker makes redundant, before any sampling.

    - Surplus: the trials numbered before it, finished or running, already make up the target.
      Trial numbers come from the storage, so exactly ``target`` trials complete whatever the
      workers' timing (unless one fails, and then the loop goes on).
    - Duplicate: an earlier trial, finished or running, holds the same candidate (two workers
      drew the same child at the same moment). Each trial writes its parameters before it looks,
      so of two racing twins the later-numbered one always sees the other.
    """
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                         TrialState.RUNNING))
               if t.number < trial.number]
    if target is not None and len(earlier) >= target:
        trial.set_user_attr("surplus", "the target was reached by other workers")
        trial.study.stop()
        raise optuna.TrialPruned("surplus")
    for t in earlier:
        if len(t.params) == len(space.names) and space.decode(t.params) == candidate:
            trial.set_user_attr("duplicate_of", t.number)
            raise optuna.TrialPruned(f"duplicate of trial {t.number}")


class _StopOnFailures:
    """A bug that fails every trial must not loop forever."""

    def __init__(self):
        self.count = 0

    def __call__(self, study, trial):
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        if self.count >= MAX_CONSECUTIVE_FAILURES:
            study.stop()


def run(ctx: SearchContext, study: optuna.Study, trials: int, progress: bool = True,
        batch_size: int | None = None, score=None, callbacks=()) -> None:
    """Run until the study holds ``trials`` COMPLETE trials (a rerun resumes)."""
    if len(_complete(study)) >= trials:
        return
    stage = study.user_attrs.get("stage", 1)
    callbacks = [MaxTrialsCallback(trials, states=(TrialState.COMPLETE,)), _StopOnFailures(),
                 *callbacks]
    if progress:
        callbacks.append(ProgressPrinter(trials, label=f"stage {stage}"))
    try:
        study.optimize(make_objective(ctx, stage, trials, batch_size, score),
                       callbacks=callbacks, catch=(FIDError,))
    except KeyboardInterrupt:
        # Optuna has failed the interrupted trial; queue its candidate for the resumed run
        for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if trial.user_attrs.get("fail_reason") == "interrupted" and not _retried(study, trial):
                retry_trial(study, trial)
        raise


def _retried(study: optuna.Study, trial: FrozenTrial) -> bool:
    return any(t.system_attrs.get("failed_trial") == trial.number
               for t in study.get_trials(deepcopy=False))


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_summary(study: optuna.Study) -> dict:
    """The best candidate of a stage-1 study, its baseline and, when it has a stage 2, the
    Pareto front of FID against GFLOPs, as ``best --json`` prints it."""
    if study.user_attrs.get("stage", 1) == 2:
        raise UsageError(f"{study.study_name!r} is a stage-2 study; ask for its stage-1 study "
                         f"{study.user_attrs.get('stage1_study')!r}")
    complete = _complete(study)
    if not complete:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    config = study.user_attrs.get(CONFIG_ATTR, {})
    best = min(complete, key=lambda t: t.value)
    uniform = study.user_attrs.get("spacings", {}).get("uniform", [])
    baseline = [t.value for t in complete if t.user_attrs.get("timesteps") == uniform]
    summary = {
        "study": study.study_name,
        "model": config.get("model"),
        "steps": config.get("steps"),
        "solver": config.get("solver"),
        "timesteps": best.user_attrs["timesteps"],
        "fid": best.value,
        "trial": best.number,
        "baseline_timesteps": uniform,
        "baseline_fid": baseline[0] if baseline else None,
        "n_complete": len(complete),
        "samples": config.get("samples"),
        "seed": config.get("seed"),
        "fid_features": study.user_attrs.get("fid_features"),
    }
    stage2_name = study.user_attrs.get("stage2_study")
    if stage2_name:
        stage2 = optuna.load_study(study_name=stage2_name, storage=study._storage)
        summary.update(stage2_summary(stage2))
    return summary


def stage2_summary(stage2: optuna.Study) -> dict:
    front = sorted(stage2.best_trials, key=lambda t: (t.values[1], t.values[0]))
    feasible = [t for t in front if _feasible(t)]
    return {
        "stage2_study": stage2.study_name,
        "full_gflops": stage2.user_attrs.get("full_gflops"),
        "max_gflops": stage2.user_attrs.get(CONFIG_ATTR, {}).get("max_gflops"),
        "stage2_n_complete": len(_complete(stage2)),
        "pareto": [{"timesteps": t.user_attrs["timesteps"], "skip": t.user_attrs["skip"],
                    "fid": t.values[0], "gflops": t.values[1], "trial": t.number}
                   for t in feasible],
    }


def _feasible(trial: FrozenTrial) -> bool:
    from optuna.samplers._base import _CONSTRAINTS_KEY

    return all(c <= 0 for c in trial.system_attrs.get(_CONSTRAINTS_KEY, ()))
