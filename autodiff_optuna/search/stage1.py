"""Stage 1: search the time steps alone, with the full network, as one Optuna study."""

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.fid import FIDError
from autodiff_optuna.models import load_model, load_scorer
from autodiff_optuna.reporting.progress import ProgressPrinter
from autodiff_optuna.sampling import SEARCH, draw, standard_spacings
from autodiff_optuna.search.config import SearchConfig, code_version
from autodiff_optuna.search.encoding import StepSpace
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.objective import score_schedule
from autodiff_optuna.storage import load_existing_study, open_storage, redact

CONFIG_ATTR = "config"
MAX_CONSECUTIVE_FAILURES = 20


@dataclass
class SearchContext:
    """Everything a search needs, built once per process."""

    config: SearchConfig
    model: object
    scorer: object
    space: StepSpace
    spacings: dict

    @classmethod
    def build(cls, config: SearchConfig, device: str = "cpu") -> "SearchContext":
        model = load_model(config.model, device)
        config.check(model.num_train_timesteps)
        scorer = load_scorer(config.model)
        alphas = _alphas_cumprod(model)
        spacings = standard_spacings(config.steps, model.num_train_timesteps, alphas)
        return cls(config, model, scorer, StepSpace(config.steps, model.num_train_timesteps),
                   spacings)

    def sampler(self) -> EvolutionarySampler:
        return EvolutionarySampler(self.space, population_size=self.config.population,
                                   initial=list(self.spacings.values()), seed=self.config.seed)


def _alphas_cumprod(model) -> np.ndarray:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod.numpy()


def open_study(ctx: SearchContext, name: str, storage_url: str | None,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create the study, or load it and refuse a configuration that differs from the stored one."""
    storage = open_storage(storage_url)
    sampler = sampler or ctx.sampler()
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if name in names:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            raise UsageError(f"study {name!r} in {redact(storage.url)} was not made by "
                             "autodiff_optuna; choose another --name")
        diffs = ctx.config.differences(stored)
        if diffs:
            raise UsageError(f"study {name!r} exists with another configuration ("
                             + "; ".join(diffs) + "); rerun with the stored values or a new --name")
        return study
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                direction="minimize")
    try:
        study.set_user_attr(CONFIG_ATTR, ctx.config.as_attrs())
        study.set_user_attr("code_version", code_version())
        study.set_user_attr("fid_features", ctx.scorer.name)
        study.set_user_attr("spacings", {k: list(v) for k, v in ctx.spacings.items()})
        # the baseline every result is compared with, scored on the same noise
        study.enqueue_trial(ctx.space.encode(ctx.spacings["uniform"]),
                            user_attrs={"spacing": "uniform"})
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)
        raise
    return study


def make_objective(ctx: SearchContext, batch_size: int | None = None):
    batch = draw(ctx.model, ctx.config.samples, ctx.config.seed, SEARCH)

    def objective(trial: optuna.Trial) -> float:
        dists = ctx.space.distributions()
        params = {name: trial.suggest_int(name, d.low, d.high) for name, d in dists.items()}
        timesteps = ctx.space.decode(params)
        trial.set_user_attr("timesteps", list(timesteps))
        try:
            return score_schedule(ctx.model, ctx.scorer, timesteps, batch, ctx.config.solver,
                                  batch_size)
        except FIDError as err:
            trial.set_user_attr("fail_reason", str(err))
            raise

    return objective


class _StopOnFailures:
    """A bug that fails every trial must not loop forever."""

    def __init__(self):
        self.count = 0

    def __call__(self, study, trial):
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        if self.count >= MAX_CONSECUTIVE_FAILURES:
            study.stop()


def run(ctx: SearchContext, study: optuna.Study, trials: int, progress: bool = True,
        batch_size: int | None = None) -> None:
    """Run until the study holds ``trials`` COMPLETE trials (a rerun resumes)."""
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete >= trials:
        return
    callbacks = [MaxTrialsCallback(trials, states=(TrialState.COMPLETE,)), _StopOnFailures()]
    if progress:
        callbacks.append(ProgressPrinter(trials))
    study.optimize(make_objective(ctx, batch_size), callbacks=callbacks, catch=(FIDError,))


def best_summary(study: optuna.Study) -> dict:
    """The best candidate and its baseline, as ``best --json`` prints it."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    config = study.user_attrs.get(CONFIG_ATTR, {})
    best = min(complete, key=lambda t: t.value)
    uniform = tuple(study.user_attrs.get("spacings", {}).get("uniform", ()))
    baseline = [t.value for t in complete if tuple(t.user_attrs.get("timesteps", ())) == uniform]
    return {
        "study": study.study_name,
        "model": config.get("model"),
        "steps": config.get("steps"),
        "solver": config.get("solver"),
        "timesteps": best.user_attrs["timesteps"],
        "fid": best.value,
        "trial": best.number,
        "baseline_timesteps": list(uniform),
        "baseline_fid": baseline[0] if baseline else None,
        "n_complete": len(complete),
        "samples": config.get("samples"),
        "seed": config.get("seed"),
        "fid_features": study.user_attrs.get("fid_features"),
    }
