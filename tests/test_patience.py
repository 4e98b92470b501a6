"""Stage 2's patience (``--stage2-patience``): it ends once generations in a row find nothing
cheaper within the export's reach, decides from the stored trials alone (a resume decides
alike), and a rerun without it searches on."""

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
    assert evaluated < TARGET
    generations = patience.complete_generations(stage2, POPULATION)
    cheapest = patience.cheapest_within_reach(stage1, stage2, generations)
    full = ctx.full_gflops
    # the last complete generation found nothing cheaper by MIN_SAVING; every earlier one did
    before = [full, *cheapest]
    steps = [earlier - later >= MIN_SAVING * full for earlier, later in zip(before, before[1:])]
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
