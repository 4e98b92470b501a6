"""Stage 2: a linked two-objective study seeded from stage 1's elites, and the confirmation
of what a search names."""

import optuna
import pytest
from optuna.trial import TrialState

from autodiff_optuna import search
from autodiff_optuna.errors import UsageError
from autodiff_optuna.search import confirm, fidelity
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.search.results import confirmed_fids, scored_points, uniform_trial
from autodiff_optuna.storage.optuna_internals import nsgaii_elite_selection

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('s2')}/s.db"
    ctx = search.SearchContext.build(SearchConfig("digits", 3, samples=80, population=4))
    stage1 = search.open_stage1(ctx, "digits-k3", url)
    search.run(ctx, stage1, 8, progress=False)
    stage2 = search.open_stage2(ctx, stage1, url, max_gflops=None)
    search.run(ctx, stage2, 14, progress=False)
    return ctx, stage1, stage2


def test_stages_are_linked(searched):
    _, stage1, stage2 = searched
    assert stage1.user_attrs["stage2_study"] == stage2.study_name
    assert stage2.user_attrs["stage1_study"] == stage1.study_name
    assert stage2.user_attrs["stage"] == 2 and stage1.user_attrs["stage"] == 1
    assert [d.name for d in stage2.directions] == ["MINIMIZE", "MINIMIZE"]
    assert (stage1.metric_names, stage2.metric_names) == (["FID"], ["FID", "GFLOPs"])


def test_stage1_elites_are_carried_with_their_scores(searched):
    ctx, stage1, stage2 = searched
    # ranked as the result ranks them: by confirmed FID where confirmed (the best few are)
    fids = {p.trial: p.fid for p in scored_points(stage1, None, 3, None)}
    ranked = sorted(stage1.get_trials(states=(TrialState.COMPLETE,)),
                    key=lambda t: (fids[t.number], t.number))
    assert fids[ranked[0].number] == confirmed_fids(stage1).get(ranked[0].number)
    first = stage2.trials[:2]
    # completed with their stage-1 values, never sampled again: generation 0's known members
    assert [t.user_attrs["stage1_trial"] for t in first] == [t.number for t in ranked[:2]]
    assert [t.user_attrs["timesteps"] for t in first] == \
        [t.user_attrs["timesteps"] for t in ranked[:2]]
    assert all(t.state == TrialState.COMPLETE for t in first)
    assert all(t.user_attrs["skip"] == [[], [], []] for t in first)
    assert all(t.system_attrs["EvolutionarySampler:generation"] == 0 for t in first)
    assert [t.values[0] for t in first] == [t.value for t in ranked[:2]]
    assert all(t.values[1] == pytest.approx(ctx.full_gflops) for t in first)
    # every other trial is a new candidate (no full-network twin of an elite), and the target
    # counts those alone
    new = stage2.trials[2:]
    elites = {tuple(t.user_attrs["timesteps"]) for t in first}
    assert not any(t.user_attrs.get("stage1_trial") is not None for t in new)
    assert not any(tuple(t.user_attrs["timesteps"]) in elites and not any(t.user_attrs["skip"])
                   for t in new if t.state == TrialState.COMPLETE)
    counts = search.study_result(stage1).counts[2]
    assert (counts["complete"], counts["carried"]) == (14, 2)
    assert fidelity.n_evaluated(stage2) == 14


def test_candidates_worse_than_uniform_are_infeasible(searched):
    _, stage1, stage2 = searched
    uniform = uniform_trial(stage1)
    bound = stage2.user_attrs["fid_bound"]
    assert bound == uniform.value  # the uniform schedule's search FID, on stage 2's noise too
    done = stage2.get_trials(states=(TrialState.COMPLETE,))
    # every trial, carried elites included, carries FID minus the bound: infeasible above it,
    # so NSGA-II's elites (and the parents of every child) are the feasible ones first
    assert all(t.constraints["fid"] == pytest.approx(t.values[0] - bound) for t in done)
    elites = nsgaii_elite_selection(4)(stage2, done)
    feasible = [t for t in done if t.values[0] <= bound]
    assert all(t.values[0] <= bound for t in elites[:min(4, len(feasible))])


def test_skip_costs_are_measured_once_and_stored(searched):
    ctx, _, stage2 = searched
    costs = stage2.user_attrs["skip_cost"]
    assert costs["layers"] == list(ctx.costs.layers) and len(costs["cost"]) == 3
    assert all(len(row) == len(ctx.costs.layers) and min(row) >= 0 for row in costs["cost"])
    assert max(max(row) for row in costs["cost"]) > 0  # some skip hurts


def test_what_the_result_names_is_confirmed_on_other_noise(searched):
    ctx, stage1, stage2 = searched
    result = search.study_result(stage1)
    named = [result.best, *(p for p in result.front
                            if result.uniform is None or p.fid <= result.uniform.fid)]
    assert all(p.confirmed_fid is not None and p.fid == p.confirmed_fid for p in named)
    assert all(0 < p.confirmed_spread < p.confirmed_fid for p in named)  # its noise, measured
    assert result.uniform.confirmed_fid is not None
    assert any(p.confirmed_fid != p.search_fid for p in named)  # other noise, other values
    summary = result.as_dict()["best"]
    assert summary["fid"] == summary["confirmed_fid"] and summary["search_fid"] is not None
    # resumable: what is confirmed is stored, and nothing is sampled for it again
    assert confirm.to_confirm(stage1, stage2) == []
    assert confirm.confirm(ctx, stage2, progress=False) == 0


def test_children_carry_valid_masks(searched):
    ctx, _, stage2 = searched
    layers = set(ctx.costs.layers)
    skipped_any = False
    for t in stage2.get_trials(states=(TrialState.COMPLETE,)):
        skip = t.user_attrs["skip"]
        assert len(skip) == 3 and all(set(s) <= layers for s in skip)
        assert t.values[1] == pytest.approx(ctx.costs.gflops(skip))
        skipped_any |= any(skip)
    assert skipped_any
    generations = {t.system_attrs["EvolutionarySampler:generation"] for t in stage2.trials}
    assert max(generations) >= 2


def test_best_json_has_the_pareto_front(searched):
    ctx, stage1, stage2 = searched
    summary = search.study_result(stage1).as_dict()
    assert summary["full_gflops"] == pytest.approx(ctx.full_gflops)
    front = summary["front"]
    assert front and all({"timesteps", "skip", "fid", "gflops", "stage", "trial"} <= set(p)
                         for p in front)
    gflops = [p["gflops"] for p in front]
    fids = [p["fid"] for p in front]
    assert gflops == sorted(gflops) and fids == sorted(fids, reverse=True)  # a real front


@pytest.mark.slow  # a second stage-2 study
def test_budget_makes_expensive_candidates_infeasible(searched, tmp_path):
    ctx, stage1, _ = searched
    # anything that skips the costliest layer once (or several cheaper ones) fits
    budget = ctx.full_gflops - max(ctx.costs.saving.values()) / 1e9
    url = f"sqlite:///{tmp_path}/b.db"
    optuna.copy_study(from_study_name=stage1.study_name, from_storage=stage1._storage,
                      to_storage=url)
    copied = optuna.load_study(study_name=stage1.study_name, storage=url)
    limited = search.open_stage2(ctx, copied, url, max_gflops=budget)
    search.run(ctx, limited, 12, progress=False, max_gflops=budget)
    summary = search.study_result(limited).as_dict()
    assert summary["stage2_max_gflops"] == budget
    # what is exported keeps to the budget (or is refused, naming why)
    assert summary["export"]["gflops"] <= budget if summary["export"] else \
        summary["export_refused"]
    infeasible = [t for t in limited.trials if t.values and t.values[1] > budget]
    assert infeasible and all(t.constraints["gflops"] > 0 for t in infeasible)
    with pytest.raises(UsageError, match="below what any candidate can cost"):
        search.open_stage2(ctx, copied, url, max_gflops=ctx.min_gflops / 2)
