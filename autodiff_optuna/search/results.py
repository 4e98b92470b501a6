"""The read side of a study: what it was made with and what it found.

Everything that shows or exports a result (``best``, ``export``, the report, the notebook, the
benchmarks) reads studies through these functions, never through the search's own modules.
"""

import optuna
from optuna.trial import FrozenTrial, TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.search import objectives
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.search.optuna_internals import storage_of

CONFIG_ATTR = "config"  # the user attribute that holds a study's configuration
# stage 1's record of the model's training schedule (its diffusers scheduler config)
TRAINING_SCHEDULE_ATTR = "training_schedule"
# stage 2's record of the GFLOPs per image no mask skips (a latent model's decoder, ...)
UNSKIPPABLE_ATTR = "unskippable_gflops"


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


def pareto_front(stage2: optuna.Study) -> list[FrozenTrial]:
    """Stage 2's feasible Pareto front of FID against GFLOPs, cheapest first."""
    # best_trials holds the feasible front only
    return sorted(stage2.best_trials, key=lambda t: (objectives.gflops(t), objectives.fid(t)))


def pareto_point(trial: FrozenTrial) -> dict:
    """A stage-2 trial as ``best --json`` lists it in its ``pareto`` front."""
    return {"timesteps": trial.user_attrs["timesteps"], "skip": trial.user_attrs["skip"],
            "fid": objectives.fid(trial), "gflops": objectives.gflops(trial),
            "trial": trial.number}


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
    best = min(complete, key=objectives.fid)
    baseline = uniform_trial(study)
    summary = {
        "study": study.study_name,
        "model": config.get("model"),
        "steps": config.get("steps"),
        "solver": config.get("solver"),
        "timesteps": best.user_attrs["timesteps"],
        "fid": objectives.fid(best),
        "trial": best.number,
        "baseline_timesteps": uniform_timesteps(study),
        "baseline_fid": objectives.fid(baseline) if baseline is not None else None,
        "n_complete": len(complete),
        "samples": config.get("samples"),
        "seed": config.get("seed"),
        "sampler": config.get("sampler"),
        "model_weights": config.get("model_weights"),
        "fid_features": study.user_attrs.get("fid_features"),
    }
    stage2_name = study.user_attrs.get("stage2_study")
    if stage2_name:
        stage2 = optuna.load_study(study_name=stage2_name, storage=storage_of(study))
        summary.update(stage2_summary(stage2))
    return summary


def stage2_summary(stage2: optuna.Study) -> dict:
    summary = {
        "stage2_study": stage2.study_name,
        "full_gflops": stage2.user_attrs.get("full_gflops"),
        "max_gflops": stage2.user_attrs.get(CONFIG_ATTR, {}).get("max_gflops"),
        "stage2_n_complete": len(complete_trials(stage2)),
        "pareto": [pareto_point(t) for t in pareto_front(stage2)],
    }
    if UNSKIPPABLE_ATTR in stage2.user_attrs:  # a latent model's: beside full_gflops
        summary[UNSKIPPABLE_ATTR] = stage2.user_attrs[UNSKIPPABLE_ATTR]
    return summary


def training_schedule(stage1: optuna.Study) -> dict | None:
    """The model's training schedule the study recorded (None: made before it was recorded,
    and not run since)."""
    schedule = stage1.user_attrs.get(TRAINING_SCHEDULE_ATTR)
    return schedule if isinstance(schedule, dict) else None
