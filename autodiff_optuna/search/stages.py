"""The two linked studies of a search: creating them, resuming them, refusing a mismatch.

Stage 1 searches the time steps alone with the full network (one objective: FID). Stage 2 is a
second study, linked to the first, that searches the time steps jointly with a per-step layer-skip
mask on two objectives, FID and GFLOPs per image. Stage 1's elites (full network) enter it as
completed trials carrying their stage-1 scores (members of its first generation, never scored
again), and the cost of every (step, layer) skip is measured once on the stage-1 best
(``skip_cost``), so that its mutation prefers skips the model can afford, and a child whose
summed costs its own trials show to be ruinous is drawn again (``damage``). Both are driven by
the ``EvolutionarySampler``; stage 1 may be run by one of Optuna's samplers instead
(``--sampler``).
"""

import time

import optuna
from optuna.trial import TrialState

from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.flops import unskippable_gflops
from autodiff_optuna.metrics.scorers import features_hint
from autodiff_optuna.models.identity import model_identity
from autodiff_optuna.models.registry import weights_hint
from autodiff_optuna.sampling.rules import SOLVERS, StepRule, step_rules
from autodiff_optuna.search import fidelity, objectives, skip_cost
from autodiff_optuna.search.config import OPTUNA_SAMPLERS, code_version
from autodiff_optuna.search.context import SearchContext
from autodiff_optuna.search.damage import DamageFilter
from autodiff_optuna.search.encoding import Candidate
from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.results import (
    complete_trials,
    half_made,
    scored_points,
    stage_state,
    stored_config,
    uniform_trial,
)
from autodiff_optuna.search.trial import FID_CONSTRAINT, GFLOPS_CONSTRAINT, fid_constraint
from autodiff_optuna.storage import (
    creation_lock,
    load_existing_study,
    record,
    redact,
    writable_storage,
)
from autodiff_optuna.storage.optuna_internals import ga_generation_key, storage_of
from autodiff_optuna.storage.record import (
    CODE_VERSION_ATTR,
    CONFIG_ATTR,
    DP_SPACING,
    FID_BOUND_ATTR,
    FID_FEATURES_ATTR,
    FULL_GFLOPS_ATTR,
    GFLOPS_ATTR,
    IDENTITY_ATTR,
    LAYER_SAVINGS_ATTR,
    LAYERS_ATTR,
    RULES_ATTR,
    SKIP_ATTR,
    SKIP_COST_ATTR,
    SOLVER_ATTR,
    SPACING_ATTR,
    SPACINGS_ATTR,
    STAGE1_ATTR,
    STAGE1_TRIAL_ATTR,
    STAGE2_ATTR,
    STAGE_ATTR,
    TIMESTEPS_ATTR,
    TRAINING_SCHEDULE_ATTR,
    UNSKIPPABLE_ATTR,
)


def stage_config(ctx: SearchContext, stage: int, max_gflops: float | None) -> dict:
    """What defines a stage's study: a rerun must match it to continue the study."""
    attrs = {**ctx.config.as_attrs(), STAGE_ATTR: stage,
             "model_weights": ctx.model.fingerprint, "fid_features": ctx.scorer.name}
    if stage == 2:
        attrs["max_gflops"] = max_gflops
    return attrs


def _sampler(ctx: SearchContext, stage: int, initial: list[Candidate],
             costs: dict | None = None) -> EvolutionarySampler:
    # stage 1 starts from the textbook spacings and random candidates (as NSGA-II starts);
    # stage 2 from variations of stage 1's elites, and breeds without Parzen children: its
    # masks are bits a kernel over steps does not model (and it was measured without them).
    # ``costs``: stage 2's measured skip costs, which weight the skips its mutation turns on,
    # and predict the damage of the children its trials show to be ruinous (``damage``)
    space = ctx.space(stage)
    prior = None if stage == 1 else _skip_prior(ctx, costs)
    breeding = (dict(first_generation="random") if stage == 1
                else dict(first_generation="children", parzen_prob=0.0, skip_prior=prior,
                          child_filter=None if prior is None else DamageFilter(space, prior)))
    return EvolutionarySampler(space, population_size=ctx.config.population,
                               initial=initial, seed=ctx.config.stage_seed(stage),
                               **breeding)


def stage1_sampler(ctx: SearchContext, initial: list[Candidate]) -> optuna.samplers.BaseSampler:
    """The configured stage-1 sampler: ours, or one of ``OPTUNA_SAMPLERS``."""
    if ctx.config.sampler == "evolutionary":
        return _sampler(ctx, 1, initial)
    return OPTUNA_SAMPLERS[ctx.config.sampler](ctx.config)


def open_stage1(ctx: SearchContext, name: str, storage) -> optuna.Study:
    """Create or resume the stage-1 study. Its first trials are the standard spacings, queued
    once by whichever process creates the study, uniform (the baseline) first, then the
    trajectory DP's spacing (``dp_candidates``; fitted only where the study is new)."""
    storage = writable_storage(storage)
    first = first_candidates(ctx)
    if name not in optuna.get_all_study_names(storage):
        known = {c for c, _ in first}
        first += [(c, attrs) for c, attrs in dp_candidates(ctx) if c not in known]
    initial = [c for c, _ in first]
    study = _open(ctx, name, storage, 1, stage1_sampler(ctx, initial),
                  first_trials=[(ctx.space(1).encode(c), attrs) for c, attrs in first],
                  extra_attrs={SPACINGS_ATTR: {k: list(v) for k, v in ctx.spacings.items()}})
    _record_model(ctx, study)
    return study


# where the solver is searched, every standard spacing starts with each of these solvers' rules,
# and the uniform spacing with every fixed solver: the baselines a user could pick without a
# search (DPM-Solver++(2M), and iPNDM, the better of the fixed solvers below 8 steps)
SPACING_SOLVERS = ("dpmpp2m", "ipndm")


def first_candidates(ctx: SearchContext) -> list[tuple[Candidate, dict]]:
    """Stage 1's first trials, uniform first, with the user attributes that name them."""
    space = ctx.space(1)
    if not space.solver_search:
        return [(space.candidate(s), {SPACING_ATTR: name}) for name, s in ctx.spacings.items()]
    first = {}
    uniform = ctx.spacings["uniform"]
    for solver, rule in SOLVERS.items():
        first.setdefault(space.candidate(uniform, rules=[rule] * len(uniform)),
                         {SPACING_ATTR: "uniform", SOLVER_ATTR: solver})
    for solver in SPACING_SOLVERS:
        for name, steps in ctx.spacings.items():
            first.setdefault(space.candidate(steps, rules=[SOLVERS[solver]] * len(steps)),
                             {SPACING_ATTR: name, SOLVER_ATTR: solver})
    return list(first.items())


# the teacher of the DP spacing: at most this many noises, over the DP grid's steps, and at
# most DP_TEACHER_BYTES of its kept trajectory; and no more than a third of the images a
# candidate is scored on (2 at least): each noise runs every grid step (51 at T=1000), so in a
# study of few small candidates a larger teacher would cost more than its search (the presets,
# 500 images a candidate and more, fit on 128)
DP_TEACHER_SAMPLES = 128
DP_TEACHER_SHARE = 3  # teacher noises <= a candidate's images // this
DP_TEACHER_BYTES = 2**30
DP_SOLVERS = ("ddim", "dpmpp2m", "ipndm")  # the DP spacings of a study that searches the solver


def dp_candidates(ctx: SearchContext) -> list[tuple[Candidate, dict]]:
    """The trajectory DP's spacing (``sampling.trajectory_dp``) for the study's solver, or for
    each of ``DP_SOLVERS`` where the solver is searched, fitted to a teacher on the teacher
    noise stream of the study's seed; none where the teacher is not finite. Fitted once per
    context."""
    if ctx.dp_fitted is None:
        ctx.dp_fitted = _fit_dp_candidates(ctx)
    return ctx.dp_fitted


def _fit_dp_candidates(ctx: SearchContext) -> list[tuple[Candidate, dict]]:
    import torch

    from autodiff_optuna.sampling.trajectory_dp import (
        default_grid,
        dp_schedule,
        teacher_trajectory,
    )

    space, model = ctx.space(1), ctx.model
    grid = default_grid(model.num_train_timesteps)
    per_sample = 2 * (len(grid) + 1) * 4 * torch.Size(model.sample_shape).numel()
    samples = max(2, min(DP_TEACHER_SAMPLES, ctx.config.samples // DP_TEACHER_SHARE,
                         DP_TEACHER_BYTES // per_sample))
    try:
        teacher = teacher_trajectory(model, grid, samples=samples, seed=ctx.config.seed,
                                     steps=len(grid))
        if not torch.isfinite(teacher.states).all():
            return []
        solvers = DP_SOLVERS if space.solver_search else (ctx.config.solver,)
        fitted = {solver: dp_schedule(model, ctx.config.steps, solver, teacher=teacher)
                  for solver in solvers}
    except UsageError:  # no finite schedule: the study starts without it
        return []
    if not space.solver_search:
        return [(space.candidate(fitted[ctx.config.solver]), {SPACING_ATTR: DP_SPACING})]
    return [(space.candidate(steps, rules=[SOLVERS[solver]] * len(steps)),
             {SPACING_ATTR: DP_SPACING, SOLVER_ATTR: solver}) for solver, steps in fitted.items()]


def load_stage1(ctx: SearchContext, name: str, storage) -> optuna.Study:
    """An existing stage-1 study, for ``--stage 2`` alone; its configuration must match."""
    study = load_existing_study(name, storage, hint="run stage 1 first (--stage 1 or both)")
    _check_stored(study, stage_config(ctx, 1, None), 1, storage)
    state = stage_state(study)
    if state["target"] is not None and not state["finished"]:  # its elites would be early ones
        done, target = state["evaluated"], state["target"]
        raise UsageError(f"stage 1 of study {name!r} has {done} of the {target} trials its last "
                         f"run aimed at: finish it first (--stage 1 --trials {target}, or both "
                         "stages with it)" + (f", or take it as it is (--stage 1 --trials {done})"
                                              if done else ""))
    _record_model(ctx, study)
    return study


def _record_model(ctx: SearchContext, study: optuna.Study) -> None:
    """What readers of the stage-1 study need from the model, so that ``best`` and ``export``
    need no model files: its training schedule (its scheduler config, for an exported
    schedule's diffusers fields) and the full network's GFLOPs per image (every result is
    compared with it), and its identity (what an exported schedule's ``apply`` checks). A study
    made before they were recorded gets them on its next run."""
    record.upgrade(study, {TRAINING_SCHEDULE_ATTR: lambda: dict(ctx.model.scheduler_config),
                           FULL_GFLOPS_ATTR: lambda: ctx.full_gflops,
                           IDENTITY_ATTR: lambda: model_identity(ctx.model)})


def open_stage2(ctx: SearchContext, stage1: optuna.Study, storage,
                max_gflops: float | None) -> optuna.Study:
    """Create or resume stage 2. Stage 1's best distinct candidates (full network; ranked by
    confirmed FIDs, as ``results`` ranks them) are added to
    it as completed trials with their stage-1 values, once, when the study is created: they
    are the first generation's known members, and its every trial scores a new candidate.
    The skip costs are measured once per study (stored; a study made before gets them)."""
    _check_budget(ctx, max_gflops)
    # ranked as the result ranks them: stage 1's confirmed best first (a candidate's luck on
    # the search's noise would otherwise decide which schedule stage 2 skips layers of)
    fids = {p.trial: p.fid for p in scored_points(stage1, None, ctx.config.steps, None)}
    ranked = sorted(complete_trials(stage1), key=lambda t: (fids[t.number], t.number))
    if not ranked:
        raise UsageError(f"stage-1 study {stage1.study_name!r} has no complete trial: "
                         "run stage 1 first")
    space = ctx.space(2)
    sources: dict[Candidate, optuna.trial.FrozenTrial] = {}  # each its best stage-1 trial
    for t in ranked:
        sources.setdefault(space.candidate(t.user_attrs[TIMESTEPS_ATTR],
                                           rules=_rules(t.user_attrs.get(RULES_ATTR))), t)
    elites = list(sources)[: ctx.config.stage2_elites]
    name = f"{stage1.study_name}-stage2"
    storage = writable_storage(storage)
    costs = _stored_costs(ctx, name, storage) or skip_cost.measure(ctx, elites[0])
    bound = _fid_bound(stage1)  # one read of stage 1's trials, for the study and its elites
    study = _open(ctx, name, storage, 2, _sampler(ctx, 2, elites, costs), max_gflops=max_gflops,
                  carried=[_carried(ctx, space, c, sources[c], max_gflops,
                                    bound.get(FID_BOUND_ATTR)) for c in elites],
                  extra_attrs={STAGE1_ATTR: stage1.study_name,
                               FULL_GFLOPS_ATTR: ctx.full_gflops,
                               LAYERS_ATTR: list(ctx.costs.layers),
                               LAYER_SAVINGS_ATTR: {k: v / 1e9
                                                    for k, v in ctx.costs.saving.items()},
                               SKIP_COST_ATTR: costs,
                               **bound,
                               **_unskippable(ctx)})
    stored = study.user_attrs.get(SKIP_COST_ATTR)
    if stored is None:  # a study made before the costs were measured
        record.upgrade(study, {SKIP_COST_ATTR: lambda: costs})
    elif stored != costs and _skip_prior(ctx, stored) is not None:
        # another worker created it a moment ago: breed by what the study holds
        study.sampler = _sampler(ctx, 2, elites, stored)
    stage1.set_user_attr(STAGE2_ATTR, name)
    return study


def check_stage1(ctx: SearchContext, name: str, storage) -> None:
    """Refuse, before anything is timed, sampled or created, a stage-1 study ``name`` that is
    not ours or was made with another configuration. Nothing is written."""
    _check_existing(name, storage, stage_config(ctx, 1, None))


def check_stage2(ctx: SearchContext, stage1_name: str, storage, max_gflops: float | None) -> None:
    """Refuse, before stage 1 runs or is even created, what stage 2 would refuse once stage 1
    is done: a ``--max-gflops`` nothing can meet, and a ``<name>-stage2`` study that is not
    ours or was made with another configuration. Nothing is written."""
    _check_budget(ctx, max_gflops)
    _check_existing(f"{stage1_name}-stage2", storage, stage_config(ctx, 2, max_gflops))


def _check_existing(name: str, storage, wanted: dict) -> None:
    """Refuse a stored study ``name`` that is not ours or was made with another configuration
    than ``wanted``, judged as ``_open`` judges it: under the creation lock, so that a study
    another worker is making right now is found complete (or, without a lock, once its
    configuration is written). A half-made one is made again when its stage opens it."""
    with creation_lock(storage) as locked:
        if name not in optuna.get_all_study_names(storage):
            return
        study = optuna.load_study(study_name=name, storage=storage)
        if not locked:
            _wait_for_config(study)
        if not (locked and half_made(study)):
            _refuse_other(study, wanted, storage)


def _check_budget(ctx: SearchContext, max_gflops: float | None) -> None:
    if max_gflops is not None and not ctx.min_gflops <= max_gflops:
        raise UsageError(f"--max-gflops {max_gflops} is below what any candidate can cost "
                         f"({ctx.min_gflops:.4f} GFLOPs/image with every layer skipped)")


def _carried(ctx: SearchContext, space, candidate: Candidate, source: optuna.trial.FrozenTrial,
             max_gflops: float | None, fid_bound: float | None) -> optuna.trial.FrozenTrial:
    """Stage-1 trial ``source`` as a completed stage-2 trial: its FID, the full network's
    GFLOPs, where it came from, and generation 0 (a member of the first generation)."""
    full = ctx.full_gflops
    attrs = {STAGE1_TRIAL_ATTR: source.number, TIMESTEPS_ATTR: list(candidate.timesteps),
             SKIP_ATTR: [[] for _ in candidate.timesteps], GFLOPS_ATTR: full}
    if candidate.rules:
        attrs[RULES_ATTR] = [rule.to_json() for rule in candidate.rules]
    constraints = {} if max_gflops is None else {GFLOPS_CONSTRAINT: full - max_gflops}
    if fid_bound is not None:
        constraints[FID_CONSTRAINT] = fid_constraint(objectives.fid(source), fid_bound)
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=objectives.values(2, objectives.fid(source), full),
        params=space.encode(candidate), distributions=space.distributions(), user_attrs=attrs,
        system_attrs={ga_generation_key(EvolutionarySampler): 0},
        constraints=constraints or None)


def _fid_bound(stage1: optuna.Study) -> dict:
    """Stage 2's ``FID_BOUND_ATTR``: the uniform schedule's search FID, on the noise stage 2
    scores on too (none where its trial did not complete)."""
    uniform = uniform_trial(stage1)
    return {} if uniform is None else {FID_BOUND_ATTR: objectives.fid(uniform)}


def _stored_costs(ctx: SearchContext, name: str, storage) -> dict | None:
    """The skip costs stage 2 ``name`` holds, if it exists and holds valid ones: a resumed
    study breeds by the costs it was made with."""
    if name not in optuna.get_all_study_names(storage):
        return None
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SKIP_COST_ATTR)
    return stored if _skip_prior(ctx, stored) is not None else None


def _skip_prior(ctx: SearchContext, costs) -> list | None:
    """The (step, layer) cost matrix of ``costs`` in the space's layer order (None: no valid
    costs, e.g. measured on another model)."""
    if not isinstance(costs, dict) or costs.get("layers") != list(ctx.costs.layers):
        return None
    matrix = costs.get("cost")
    steps, width = ctx.config.steps, len(ctx.costs.layers)
    if (not isinstance(matrix, list) or len(matrix) != steps
            or not all(isinstance(row, list) and len(row) == width
                       and all(isinstance(v, (int, float)) for v in row) for row in matrix)):
        return None
    return matrix


def _rules(stored: list | None) -> list[StepRule] | None:
    return None if stored is None else list(step_rules(stored, len(stored)))


def _unskippable(ctx: SearchContext) -> dict:
    """What no mask skips (a latent model's decoder, its text encoder), recorded beside
    ``full_gflops`` where the model has any (a pixel model's study stays as it was)."""
    costs = unskippable_gflops(ctx.model)
    return {UNSKIPPABLE_ATTR: costs} if costs else {}


def _open(ctx, name, storage, stage, sampler, max_gflops=None, extra_attrs=None,
          first_trials=(), carried=()) -> optuna.Study:
    """Create the study, or load it and refuse a configuration that differs from the stored one.

    Creation happens under the database's creation lock, and the configuration is written last:
    a worker that finds the study with its configuration finds it complete (its attributes,
    queued first trials and ``carried`` completed ones). One found without it was left
    half-made by a process that died during creation (the lock is free again): holding no
    trial that ever ran, it is made again."""
    storage = writable_storage(storage)
    wanted = stage_config(ctx, stage, max_gflops)
    # multi-fidelity pruning needs one objective (Optuna's pruners rank a single value)
    pruner = fidelity.make_pruner(ctx.config.min_samples if stage == 1 else None)
    with creation_lock(storage) as locked:
        study = _load_made(name, storage, sampler, pruner, locked)
        if study is None:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        directions=objectives.directions(stage), pruner=pruner)
            _write_new_study(ctx, study, stage, wanted, extra_attrs, first_trials, carried)
    _check_stored(study, wanted, stage, storage)
    objectives.label(study, stage)  # new, or made before its values had names
    return study


def _load_made(name, storage, sampler, pruner, locked: bool) -> optuna.Study | None:
    """The study ``name`` if it exists and is not half-made (None: create it)."""
    if name not in optuna.get_all_study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if not locked:  # no creation lock on this database: another worker may still be writing it
        _wait_for_config(study)
    if not (locked and half_made(study)):  # ours, or refused as not ours by the check
        return study
    # one of ours that a process killed while making it left without its configuration (the
    # marker is written first): nothing of value in it. Anything unmarked is never deleted.
    optuna.delete_study(study_name=name, storage=storage)
    return None


def _write_new_study(ctx, study, stage, wanted, extra_attrs, first_trials, carried=()) -> None:
    try:
        record.mark(study)
        study.set_user_attr(STAGE_ATTR, stage)
        study.set_user_attr(CODE_VERSION_ATTR, code_version())
        study.set_user_attr(FID_FEATURES_ATTR, ctx.scorer.name)
        for key, value in (extra_attrs or {}).items():
            study.set_user_attr(key, value)
        for params, user_attrs in first_trials:
            study.enqueue_trial(params, user_attrs=user_attrs)
        for trial in carried:
            study.add_trial(trial)
        study.set_user_attr(CONFIG_ATTR, wanted)
    except BaseException:
        optuna.delete_study(study_name=study.study_name, storage=storage_of(study))
        raise


def _wait_for_config(study: optuna.Study, seconds: float = 30.0) -> None:
    """On a database without a creation lock, another worker may have created the study a
    moment ago and still be writing it."""
    deadline = time.monotonic() + seconds
    while CONFIG_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)


def _hint(key: str, stored: dict, wanted: dict) -> str:
    """For the model and the FID reference, the flags that load the stored ones; for the
    settings a preset changed since studies were made with them, the flag that resumes one."""
    if key == "model_weights" and stored.get(key) and wanted.get(key):
        return f" ({weights_hint(stored[key], wanted[key], wanted['model'])})"
    if key == "fid_features" and stored.get(key) and wanted.get(key):
        return f" ({features_hint(stored[key], wanted[key])})"
    if key in ("noise_scale", "step_moves", "population"):  # presets changed them since
        value = stored[key]
        value = f"{value:g}" if isinstance(value, float) else value
        return f" (--{key.replace('_', '-')} {value} resumes it)"
    return ""


def _check_stored(study: optuna.Study, wanted: dict, stage: int, storage) -> None:
    """Refuse a study that is not ours or was made with another configuration; one of ours made
    before the marker existed gets it here (the study is opened to be written)."""
    _refuse_other(study, wanted, storage)
    record.mark(study)


def _refuse_other(study: optuna.Study, wanted: dict, storage) -> None:
    """One line for a study that is not ours, or was made with another configuration than
    ``wanted``."""
    where = f"study {study.study_name!r} in {redact(storage.url)}"
    if not record.is_ours(study.user_attrs):
        raise UsageError(f"{where} was not made by autodiff_optuna; choose another --name")
    stored = stored_config(study)
    diffs = [f"{key}: stored {stored.get(key)!r}, requested {value!r}{_hint(key, stored, wanted)}"
             for key, value in wanted.items() if stored.get(key) != value]
    if diffs:
        raise UsageError(f"{where} exists with another configuration (" + "; ".join(diffs)
                         + "); rerun with the stored values or choose a new --name")
