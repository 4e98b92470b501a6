"""Stage 2: a linked two-objective study seeded from stage 1's elites."""

import optuna
import pytest
from optuna.trial import TrialState

from autodiff_optuna import search
from autodiff_optuna.errors import UsageError
from autodiff_optuna.search.config import SearchConfig

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


def test_stage1_elites_are_the_first_generation(searched):
    ctx, stage1, stage2 = searched
    ranked = sorted(stage1.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    elites = [t.user_attrs["timesteps"] for t in ranked[:2]]
    first = stage2.trials[:2]
    assert [t.user_attrs["timesteps"] for t in first] == elites
    assert all(t.user_attrs["skip"] == [[], [], []] for t in first)
    assert all(t.system_attrs["EvolutionarySampler:generation"] == 0 for t in first)
    # same noise, same schedule, full network: the same FID as in stage 1
    assert first[0].values[0] == pytest.approx(ranked[0].value)
    assert first[0].values[1] == pytest.approx(ctx.full_gflops)


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
