"""Stage 2 stops where it finds nothing: ``--stage2-patience`` generations in a row that put no
new point within reach of the export.

Stage 2 exists to find schedules cheaper than stage 1's best at nearly its quality. On a model
whose every layer matters at a few steps (the bundled digits model: of ten preset studies one
exported a stage-2 point, at 99.5% of the GFLOPs, and stage 2 took about 60% of the images) it
can search its whole budget and change nothing. After each complete generation, the cheapest
stage-2 point so far whose FID is within the export's tolerance (``results.FID_TOLERANCE`` of
the best, and no worse than the uniform schedule) is compared with the one before it, by the
FIDs the result ranks with (``results.scored_points``: confirmed, else the search's raised by
the rise the confirmed showed), among the points it offers (``results.offered``), so that a
point that only looks good by one noise's luck does not keep it going. ``patience`` generations
without one cheaper by ``results.MIN_SAVING`` of the full network end the stage; its
confirmation then runs as at the target. Only the generations that hold candidates of stage 2's
own count (a small population's first may hold stage 1's carried elites alone). It is read from
the stored trials, so every worker decides alike; once made, the decision is kept on the study
(``STAGE2_STOPPED_ATTR``), since the confirmation that follows moves the FIDs it was made by,
and a resume must not search on for that. A rerun with ``--stage2-patience 0`` (or more
patience than the study ran out of) searches on.
"""

import optuna
from optuna.trial import TrialState

from autodiff_optuna.search.evolutionary import EvolutionarySampler
from autodiff_optuna.search.fidelity import is_carried, is_evaluated
from autodiff_optuna.search.results import (
    MIN_SAVING,
    check_config,
    export_limit,
    linked_studies,
    offered,
    scored_points,
    uniform_trial,
)
from autodiff_optuna.storage import record
from autodiff_optuna.storage.optuna_internals import ga_generation_key


def complete_generations(study: optuna.Study, population: int) -> list[int]:
    """Stage 2's complete generations (``population`` evaluated members each, stage 1's
    carried elites among generation 0's), in order: how many candidates of its own each holds.
    Read afresh: an Optuna callback's cached view still shows the trial it was called for
    running."""
    attr = ga_generation_key(EvolutionarySampler)
    members: dict[int, int] = {}
    own: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if is_evaluated(t) and attr in t.system_attrs:
            g = t.system_attrs[attr]
            members[g] = members.get(g, 0) + 1
            own[g] = own.get(g, 0) + (not is_carried(t))
    done = []
    while members.get(len(done), 0) >= population:
        done.append(own[len(done)])
    return done


def cheapest_within_reach(stage1: optuna.Study, stage2: optuna.Study,
                          generations: int) -> list[float]:
    """After each of stage 2's first ``generations`` generations, the GFLOPs of the cheapest
    point of stage 2 so far within the export's reach (the full network's while none is)."""
    steps = check_config(stage1)["steps"]
    full = record.full_gflops(stage1.user_attrs, stage2.user_attrs)
    points = offered(scored_points(stage1, stage2, steps, full))
    uniform = uniform_trial(stage1)
    uniform_fid = next((p.fid for p in points if uniform is not None and p.stage == 1
                        and p.trial == uniform.number), None)
    attr = ga_generation_key(EvolutionarySampler)
    generation = {t.number: t.system_attrs.get(attr) for t in stage2.get_trials(deepcopy=False)}
    stage1_best = min((p.fid for p in points if p.stage == 1), default=float("inf"))
    cheapest, out = full, []
    for g in range(generations):
        known = [p for p in points if p.stage == 2 and generation.get(p.trial) is not None
                 and generation[p.trial] <= g]
        best = min([stage1_best, *(p.fid for p in known)])
        limit = export_limit(best, uniform_fid)
        cheapest = min([cheapest, *(p.gflops for p in known if p.fid <= limit)])
        out.append(cheapest)
    return out


def stopped(study: optuna.Study, population: int, patience: int) -> dict | None:
    """Whether stage 2 ``study`` has run out of ``patience``: the generation after which it
    stops and why (None: it goes on; always, at patience 0). A decision kept on the study
    stands while no generation has completed since, for as much patience as it was made with
    or less (a study out of patience p is out of any less; more may search on)."""
    if patience <= 0:
        return None
    own = complete_generations(study, population)
    kept = study.user_attrs.get(record.STAGE2_STOPPED_ATTR)
    if (isinstance(kept, dict) and kept.get("after_generation") == len(own) - 1
            and isinstance(kept.get("patience"), int) and patience <= kept["patience"]):
        return {k: v for k, v in kept.items() if k != "evaluated"}
    searched = [g for g, n in enumerate(own) if n]  # generations with candidates of its own
    if len(searched) < patience:
        return None
    stage1, stage2 = linked_studies(study)
    full = record.full_gflops(stage1.user_attrs, stage2.user_attrs)
    cheapest = cheapest_within_reach(stage1, stage2, len(own))
    before = [full, *cheapest]  # before[g]: the cheapest before generation g
    if any(cheapest[g] < before[g] - MIN_SAVING * full for g in searched[-patience:]):
        return None
    return {"after_generation": len(own) - 1, "patience": patience,
            "gflops_share": cheapest[-1] / full}
