"""Multi-fidelity pruning: growing sample counts, like-for-like comparisons, the trial budget."""

import optuna
import pytest
from optuna.trial import TrialState

from autodiff_optuna import search
from autodiff_optuna.cli import main
from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.scoring import score_schedule
from autodiff_optuna.models import load_model
from autodiff_optuna.sampling import SEARCH, draw
from autodiff_optuna.search import EvolutionarySampler, fidelity
from autodiff_optuna.search.config import SearchConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
CONFIG = SearchConfig("digits", 3, samples=320, population=4, min_samples=80)


def test_rungs_double_up_to_the_full_count():
    assert fidelity.rungs(1000, 250) == [250, 500]
    assert fidelity.rungs(1000, 100) == [100, 200, 400, 800]
    assert fidelity.rungs(1000, None) == []


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('mf')}/mf.db"
    ctx = search.SearchContext.build(CONFIG)
    study = search.open_stage1(ctx, "digits-k3", url)
    search.run(ctx, study, 14, progress=False)
    return ctx, study, study.trials  # the trials as they stood at 14 (a later test adds more)


@pytest.mark.slow  # a pruned study of 14 trials (module fixture)
def test_pruned_trials_count_towards_the_budget(pruned_study):
    _, _, trials = pruned_study
    stopped = [t for t in trials if fidelity.PRUNED_AT in t.user_attrs]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert stopped, "the pruner stopped no candidate"
    assert len(stopped) + len(complete) == sum(map(fidelity.is_evaluated, trials)) == 14
    for t in stopped:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs[fidelity.PRUNED_AT] in (80, 160)
        assert set(t.intermediate_values) <= {80, 160}


@pytest.mark.slow  # a pruned study of 14 trials (module fixture)
def test_the_spacings_queued_first_are_never_stopped_early(pruned_study):
    _, _, trials = pruned_study
    # the baselines (the standard spacings and the trajectory DP's) beyond the pruner's startup
    queued = [t for t in trials if "spacing" in t.user_attrs]
    assert len(queued) > fidelity.STARTUP_TRIALS
    assert all(t.state == TrialState.COMPLETE for t in queued)
    # ... and they report at every rung: the percentile's first values, so that it does not
    # rest on the first bred trial or two
    assert all(sorted(t.intermediate_values) == [80, 160] for t in queued)


@pytest.mark.slow  # a pruned study of 14 trials (module fixture)
def test_complete_trials_are_scored_like_unpruned_ones(pruned_study):
    """The prefixes are the study's own noise: a finished trial's FID is the plain FID on all
    of it, and its reports are the FIDs of the prefixes."""
    _, _, trials = pruned_study
    model, scorer = load_model("digits"), load_scorer("digits")
    batch = draw(model, CONFIG.samples, CONFIG.seed, SEARCH)
    trial = [t for t in trials if t.state == TrialState.COMPLETE][-1]
    steps = tuple(trial.user_attrs["timesteps"])
    assert sorted(trial.intermediate_values) == [80, 160]
    assert trial.value == pytest.approx(score_schedule(model, scorer, steps, batch, "ddim"),
                                        rel=1e-4)
    first = batch.subset(0, 80)
    assert trial.intermediate_values[80] == pytest.approx(
        score_schedule(model, scorer, steps, first, "ddim"), rel=1e-4)


@pytest.mark.slow  # resumes a pruned study
def test_a_rerun_resumes_the_pruned_study(pruned_study):
    ctx, study, _ = pruned_study
    search.run(ctx, study, 17, progress=False)
    evaluated = [t for t in study.trials if fidelity.is_evaluated(t)]
    assert len(evaluated) == 17
    candidates = [tuple(t.user_attrs["timesteps"]) for t in evaluated]
    assert len(set(candidates)) == len(candidates)


def test_bad_min_samples_is_one_line(capsys, tmp_path):
    args = ["study", "--model", "digits", "--steps", "3", "--samples", "200", "--stage", "1",
            "--storage", f"sqlite:///{tmp_path}/x.db"]
    assert main([*args, "--min-samples", "200"]) == 2
    assert "--min-samples must be between" in capsys.readouterr().err
    assert main([*args, "--min-samples", "30"]) == 2  # below the FID feature dimension
    assert "--min-samples must exceed the FID feature dimension" in capsys.readouterr().err


@pytest.mark.slow  # a pruned study of 14 trials (module fixture)
def test_pruned_children_are_members_of_their_generation(pruned_study):
    """Pruning filters a generation; it does not make generations longer in candidates."""
    _, _, trials = pruned_study
    generation = EvolutionarySampler._get_generation_key()
    members = {}
    for t in trials:
        if fidelity.is_evaluated(t):
            members.setdefault(t.system_attrs[generation], []).append(t)
    finished = sorted(members)[:-1]
    assert finished, "the study never left generation 0"
    assert all(len(members[g]) == CONFIG.population for g in finished)
    assert any(t.state == TrialState.PRUNED for g in finished for t in members[g])
