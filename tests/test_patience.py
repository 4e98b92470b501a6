"""Stage 2's patience (``--stage2-patience``): it ends once generations in a row find nothing
cheaper within the export's reach, decides from the stored trials alone (a resume decides
alike), and a rerun without it searches on."""

import json

import optuna
import pytest

from autodiff_optuna import search
from autodiff_optuna.cli import main
from autodiff_optuna.search import confirm, patience
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.search.fidelity import n_evaluated
from autodiff_optuna.search.results import MIN_SAVING, stage_state
from autodiff_optuna.storage import record

optuna.logging.set_verbosity(optuna.logging.WARNING)
POPULATION = 4
TARGET = 40  # stage-2 trials: far more than the patience lets it run


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('patience')}/s.db"
    ctx = search.SearchContext.build(SearchConfig("digits", 3, samples=80,
                                                  population=POPULATION))
    stage1 = search.open_stage1(ctx, "digits-k3", url)
    search.run(ctx, stage1, 8, progress=False)
    stage2 = search.open_stage2(ctx, stage1, url, max_gflops=None)
    search.run(ctx, stage2, TARGET, progress=False, stage2_patience=1)
    return ctx, url, stage1, stage2


@pytest.mark.slow  # a whole (tiny) two-stage study
def test_stage2_ends_when_a_generation_finds_nothing_cheaper(stopped_early):
    ctx, _, stage1, stage2 = stopped_early
    evaluated = n_evaluated(stage2)
    own = patience.complete_generations(stage2, POPULATION)
    generations = len(own)
    # it stopped right at the end of a generation: its own candidates there, no trial more
    assert evaluated == sum(own) < TARGET
    cheapest = patience.cheapest_within_reach(stage1, stage2, generations)
    full = ctx.full_gflops
    # the last complete generation found nothing cheaper by MIN_SAVING; every earlier one did
    # (the FIDs confirmed since may move these a little: the decision stands, kept below)
    before = [full, *cheapest]
    steps = [later < earlier - MIN_SAVING * full for earlier, later in zip(before, before[1:])]
    assert steps[-1] is False and all(steps[:-1])
    stopped = stage2.user_attrs[record.STAGE2_STOPPED_ATTR]
    assert stopped["after_generation"] == generations - 1
    assert stopped["evaluated"] == evaluated and stopped["patience"] == 1
    state = stage_state(stage2)
    assert state["finished"] and state["stopped"] == stopped
    assert confirm.to_confirm(stage1, stage2) == []  # confirmed, as at the target


@pytest.mark.slow
def test_a_resume_decides_alike_and_without_patience_searches_on(stopped_early):
    ctx, url, _, stage2 = stopped_early
    stage2 = optuna.load_study(study_name=stage2.study_name, storage=url)
    evaluated = n_evaluated(stage2)
    search.run(ctx, stage2, TARGET, progress=False, stage2_patience=1)
    assert n_evaluated(stage2) == evaluated  # nothing new: it has run out already
    kept = stage2.user_attrs[record.STAGE2_STOPPED_ATTR]
    assert patience.stopped(stage2, POPULATION, 1) == {k: v for k, v in kept.items()
                                                       if k != "evaluated"}
    # out of patience 1 says nothing of 2: a rerun with more patience decides afresh
    assert patience.stopped(stage2, POPULATION, 2) != patience.stopped(stage2, POPULATION, 1)
    search.run(ctx, stage2, evaluated + 2, progress=False, stage2_patience=0)
    assert n_evaluated(stage2) == evaluated + 2
    assert stage2.user_attrs[record.STAGE2_STOPPED_ATTR] is None  # it reached its target
    assert stage_state(stage2)["finished"] and stage_state(stage2)["stopped"] is None


def test_a_negative_patience_is_one_line(capsys):
    # refused before a model is loaded or a study opened
    assert main(["study", "--model", "digits", "--steps", "4", "--stage2-patience", "-1",
                 "--storage", "sqlite:///:memory:"]) == 2
    assert capsys.readouterr().err.strip().endswith("--stage2-patience must be 0 (off) or more, "
                                                    "got -1")


@pytest.mark.slow
def test_a_first_generation_of_carried_elites_alone_is_no_patience_spent(tmp_path, capsys):
    # population 2: stage 1's 2 elites fill generation 0, and stage 2 has searched nothing yet
    url = f"sqlite:///{tmp_path}/s.db"
    ctx = search.SearchContext.build(SearchConfig("digits", 3, samples=80, population=2))
    stage1 = search.open_stage1(ctx, "digits-k3", url)
    search.run(ctx, stage1, 6, progress=False)
    stage2 = search.open_stage2(ctx, stage1, url, max_gflops=None)
    search.run(ctx, stage2, 20, progress=False, stage2_patience=1)
    own = patience.complete_generations(stage2, 2)
    assert own[0] == 0 and n_evaluated(stage2) == sum(own) >= 2
    assert main(["list", "--storage", url]) == 0
    out = capsys.readouterr().out
    stopped = stage2.user_attrs[record.STAGE2_STOPPED_ATTR]
    assert stopped["after_generation"] == len(own) - 1 >= 1
    assert (f"done {sum(own)}/20 (ended after generation {stopped['after_generation']}: "
            "nothing cheaper within the tolerance)") in out


@pytest.mark.slow  # times the model
def test_a_budget_turns_the_patience_off_in_the_estimate_too(capsys):
    # the preset's patience gives an earliest end (test_estimate); with a budget, none
    assert main(["study", "--model", "digits", "--steps", "4", "--estimate", "--json",
                 "--max-gflops", "0.1"]) == 0
    assert "earliest" not in json.loads(capsys.readouterr().out)
