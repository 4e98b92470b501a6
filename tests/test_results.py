"""One definition of a search's result (search/results.py), as every output gives it: the best
of both stages, the thinned Pareto front, the exported point, and the uniform baseline that no
result may be worse than."""

import json

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.reporting.dashboard import note
from autodiff_optuna.search.fidelity import PRUNED_AT
from autodiff_optuna.search.results import ExportRule, describe_counts, study_result, thin
from autodiff_optuna.storage import record

FULL = 0.1295  # GFLOPs per image of the full network
UNIFORM = [750, 500, 250, 0]


def make_search(storage, stage1, stage2=(), max_gflops=None, name="s-k4", system_attrs=None):
    """A two-stage search as the study command stores it, with these trials: stage 1
    ``(timesteps, fid)``, stage 2 ``(timesteps, skipped layer-steps, fid, gflops)``, each with
    ``system_attrs`` (the sampler's, e.g. its generation)."""
    config = {"model": "digits", "steps": 4, "solver": "ddim", "samples": 100, "seed": 0}
    s1 = optuna.create_study(study_name=name, storage=storage)
    for key, value in {"stage": 1, "full_gflops": FULL, "spacings": {"uniform": UNIFORM},
                       "config": config}.items():
        s1.set_user_attr(key, value)
    for timesteps, fid in stage1:
        s1.add_trial(create_trial(value=fid, user_attrs={"timesteps": timesteps}))
    if not stage2:
        return s1
    s2 = optuna.create_study(study_name=f"{name}-stage2", storage=storage,
                             directions=["minimize", "minimize"])
    for key, value in {"stage": 2, "stage1_study": name, "full_gflops": FULL,
                       "config": {**config, "stage": 2, "max_gflops": max_gflops}}.items():
        s2.set_user_attr(key, value)
    for timesteps, skipped, fid, gflops in stage2:
        skip = [["mid"] * skipped] + [[] for _ in range(3)]
        s2.add_trial(create_trial(values=[fid, gflops], user_attrs={
            "timesteps": timesteps, "skip": skip, "gflops": gflops},
            system_attrs=system_attrs or {}))
    s1.set_user_attr("stage2_study", s2.study_name)
    return s1


@pytest.fixture
def storage():
    return optuna.storages.InMemoryStorage()


def test_the_best_is_the_lowest_fid_of_both_stages(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.881)],
                        [([491, 381, 258, 101], 1, 8.142, 0.1290)])
    result = study_result(study)
    assert (result.best.stage, result.best.trial, result.best.fid) == (2, 0, 8.142)
    assert result.uniform.fid == 68.0 and result.uniform.trial == 0
    # the same answer through a stage-2 name
    stage2 = optuna.load_study(study_name="s-k4-stage2", storage=storage)
    assert study_result(stage2).best == result.best


def test_a_point_that_saves_almost_nothing_leaves_the_front(storage):
    # the front: 0.117629 at FID 44.086 beside 0.117637 at FID 25.172
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.881)], [
        ([900, 500, 250, 10], 3, 44.086, 0.117629),
        ([900, 500, 250, 20], 2, 25.172, 0.117637),
        ([900, 500, 250, 30], 6, 60.000, 0.090000)])
    front = study_result(study).front
    assert [(p.fid, p.gflops) for p in front] == [(60.0, 0.09), (25.172, 0.117637),
                                                   (8.881, FULL)]
    assert all(b.gflops - a.gflops >= 0.005 * FULL for a, b in zip(front, front[1:]))
    assert [p.fid for p in thin(front, 0.0)] == [60.0, 25.172, 8.881]


def test_export_is_the_cheapest_within_the_tolerance(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([496, 381, 257, 101], 2, 8.7, 0.110),  # within 10%
        ([496, 381, 257, 90], 4, 9.0, 0.100)])  # 12.5% worse: not at the default
    assert study_result(study).fast.fid == 8.7
    assert study_result(study, ExportRule(fid_tolerance=0.2)).fast.fid == 9.0
    assert study_result(study, ExportRule(fid_tolerance=0.0)).fast.fid == 8.0


def test_export_trades_quality_only_by_more_than_the_confirmed_fids_noise(storage):
    """A cheaper point within the tolerance by less than the noise of the two confirmed FIDs
    is not exported in place of the best; one that clears it by more is."""
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([496, 381, 257, 101], 2, 8.3, 0.110),
        ([496, 381, 257, 90], 4, 8.7, 0.100)])
    stage2 = optuna.load_study(study_name="s-k4-stage2", storage=storage)
    for study_, trial, fid, spread in ((study, 1, 8.0, 0.3), (stage2, 0, 8.3, 0.3),
                                       (stage2, 1, 8.7, 0.3)):
        study_.set_user_attr(f"confirmed_fid:{trial}", fid)
        study_.set_user_attr(f"confirmed_fid_spread:{trial}", spread)
    result = study_result(study)
    # 8.3 + 0.42 <= 8.8 clears the 10% limit by the noise; 8.7 + 0.42 does not
    assert result.fast.fid == 8.3 and result.best.confirmed_spread == 0.3
    assert "by more than the confirmed FIDs' noise" in result.rule()
    stage2.set_user_attr("confirmed_fid_spread:0", 1.0)  # a noisier measurement: the best
    assert study_result(study).fast.fid == 8.0
    assert "8.000 ± 0.300 confirmed (search 8.000)" in study_result(study).best.describe()


def test_a_fid_confirmed_before_spreads_were_measured_is_confirmed_again(storage):
    from autodiff_optuna.search.confirm import to_confirm

    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)])
    for trial, fid in ((0, 67.0), (1, 8.2)):
        study.set_user_attr(f"confirmed_fid:{trial}", fid)
    assert sorted(p.trial for p in to_confirm(study, None)) == [0, 1]
    assert study_result(study).fast.fid == 8.2  # ranked by it meanwhile, with no margin
    study.set_user_attr("confirmed_fid_spread:0", 2.0)
    study.set_user_attr("confirmed_fid_spread:1", 0.5)
    assert to_confirm(study, None) == []


def test_an_unconfirmed_point_ranks_by_its_search_fid_plus_the_confirmed_rise(storage):
    """Confirmed FIDs rose by a median of 2: an unconfirmed point that scored 9 on the search's
    noise ranks as 11, behind a point confirmed at 10, and is not confirmed for that alone (the
    cascade of confirming every point that looks better by its luck); one that scored 7 is."""
    from autodiff_optuna.search.confirm import to_confirm

    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0),
                                  ([500, 381, 257, 101], 8.5), ([520, 381, 257, 101], 8.8),
                                  ([540, 381, 257, 101], 9.0)])
    for trial, fid in ((0, 68.0), (1, 10.0), (2, 10.5), (3, 11.0)):  # rises 0, 2, 2, 2.2
        study.set_user_attr(f"confirmed_fid:{trial}", fid)
        study.set_user_attr(f"confirmed_fid_spread:{trial}", 0.5)
    result = study_result(study)
    assert (result.best.trial, result.best.fid) == (1, 10.0)
    assert to_confirm(study, None) == []
    study.add_trial(create_trial(value=7.0, user_attrs={"timesteps": [560, 381, 257, 101]}))
    lucky = study_result(study).best
    assert (lucky.trial, lucky.fid, lucky.search_fid) == (5, 9.0, 7.0)
    assert "FID 9.000 expected (search 7.000, not confirmed)" in lucky.describe()
    assert [p.trial for p in to_confirm(study, None)] == [5]


def test_the_baseline_ranks_by_the_mean_of_its_search_and_confirmed_fids(storage):
    """A benchmark study's case: the searched schedule scored 2.01 on the search's noise and
    2.29 confirmed, the uniform baseline 3.22 and 2.21. The schedule was picked from many for
    its search FID, so only its confirmed FID counts; the baseline is confirmed whatever it
    scores, so both of its FIDs count: 2.715, and the schedule is the best."""
    study = make_search(storage, [(UNIFORM, 3.22), ([763, 460, 259, 6], 2.01)])
    for trial, fid in ((0, 2.21), (1, 2.29)):
        study.set_user_attr(f"confirmed_fid:{trial}", fid)
        study.set_user_attr(f"confirmed_fid_spread:{trial}", 0.3)
    result = study_result(study)
    assert (result.best.trial, result.best.fid) == (1, 2.29)
    assert result.uniform.fid == pytest.approx(2.715) and result.uniform.pooled
    assert ("FID 2.715 (the mean of confirmed 2.210 ± 0.300 and search 3.220)"
            in result.uniform.describe())
    assert not result.best.pooled and result.uniform.as_dict()["pooled"]
    assert "pooled" not in result.best.as_dict()
    from autodiff_optuna.search.confirm import to_confirm

    assert to_confirm(study, None) == []  # the limit (uniform's FID) admits no new point
    # a baseline whose images failed on the confirmation's noise keeps that FID
    study.set_user_attr("confirmed_fid:0", float("inf"))
    assert study_result(study).uniform.fid == float("inf")
    # uniform with several fixed solvers (--solver search): the baseline is the best of them
    # on the search's noise, picked for its luck as the rest were, and not pooled
    study.add_trial(create_trial(value=3.0, user_attrs={"timesteps": UNIFORM}))
    study.set_user_attr("confirmed_fid:2", 2.2)
    uniform = study_result(study).uniform
    assert (uniform.trial, uniform.fid, uniform.pooled) == (2, 2.2, False)


def _confirm(study, fids, spread=0.3):
    for trial, fid in fids.items():
        study.set_user_attr(f"confirmed_fid:{trial}", fid)
        study.set_user_attr(f"confirmed_fid_spread:{trial}", spread)


def test_a_stage2_point_ahead_on_the_confirmation_noise_alone_is_not_offered(storage):
    """A benchmark study's case: stage 1's best scored 2.20 on the search's noise and 2.50
    confirmed; a stage-2 point 3.09 and 2.34. Only one draw of noise puts it ahead, and it
    scored 2.66 held out against 1.87: not the best, not on the front, not confirmed again,
    though it stays a trial the report plots. A stage-2 point ahead on both noises is the
    best."""
    from autodiff_optuna.reporting import optuna_plots
    from autodiff_optuna.reporting.candidates import scored
    from autodiff_optuna.reporting.plots import SET_ASIDE_LEGEND
    from autodiff_optuna.reporting.text import result_lines
    from autodiff_optuna.search.confirm import to_confirm
    from autodiff_optuna.search.evolutionary import EvolutionarySampler
    from autodiff_optuna.search.patience import cheapest_within_reach
    from autodiff_optuna.storage.optuna_internals import ga_generation_key

    steps = [712, 441, 241, 8]
    for name, search, confirmed in (("one-k4", 3.09, 2.34), ("both-k4", 2.15, 2.34)):
        study = make_search(storage, [(UNIFORM, 4.0), (steps, 2.20)],
                            [(steps, 2, search, 0.1283)], name=name,
                            system_attrs={ga_generation_key(EvolutionarySampler): 0})
        stage2 = optuna.load_study(study_name=f"{name}-stage2", storage=storage)
        _confirm(study, {0: 4.2, 1: 2.50})
        _confirm(stage2, {0: confirmed})
        result = study_result(study)
        ahead = name == "both-k4"
        assert (result.best.stage, result.best.fid) == ((2, 2.34) if ahead else (1, 2.50))
        assert [p.stage for p in result.front] == ([2] if ahead else [1])
        assert to_confirm(study, stage2) == []
        assert (2, 0) in {(p.stage, p.trial) for p in scored(result)}
        aside = [(p["stage"], p["trial"]) for p in result.as_dict()["set_aside"]]
        assert aside == ([] if ahead else [(2, 0)])
        assert any(line.startswith("  set aside  1 stage-2 point ahead of stage 1's best")
                   for line in result_lines(result)) != ahead
        assert ("**set aside**" in note(result)) != ahead
        # the report's Pareto plot crosses it, at its confirmed FID, both FIDs in its hover
        pareto = optuna_plots.pareto_panel(result, result.choose()).figure
        crossed = [t for t in pareto.data if t.name == SET_ASIDE_LEGEND]
        assert [(t.y, t.marker.symbol) for t in crossed] == ([] if ahead else [((2.34,), "x")])
        assert ahead or "(confirmed 2.340, search 3.090)" in crossed[0].text[0]
        # stage 2's patience counts it within reach only where it is offered
        assert cheapest_within_reach(study, stage2, 1) == [0.1283 if ahead else FULL]
    # not yet confirmed, ranked ahead by its expected FID: confirmed first, as the best
    study = make_search(storage, [(UNIFORM, 4.0), (steps, 2.20)],
                        [(steps, 2, 2.25, 0.1283)], name="unconfirmed-k4")
    _confirm(study, {0: 4.2, 1: 2.50})
    stage2 = optuna.load_study(study_name="unconfirmed-k4-stage2", storage=storage)
    result = study_result(study)
    assert (result.best.stage, result.set_aside) == (2, [])
    assert [(p.stage, p.trial) for p in to_confirm(study, stage2)] == [(2, 0)]


def test_a_budget_worse_than_uniform_is_refused_naming_one_that_is_not(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([997, 570, 496, 258], 9, 388.0, 0.090),
        ([900, 500, 250, 20], 3, 25.0, 0.117)])
    with pytest.raises(UsageError) as refused:
        study_result(study, ExportRule(max_gflops=0.1)).choose()
    message = str(refused.value)
    assert "is worse than the uniform schedule (FID 68.000; the best there: FID 388.000)" in message
    assert "not: stage 2 trial 1" in message and "--max-gflops 0.117)" in message
    # the budget it names admits that point
    assert study_result(study, ExportRule(max_gflops=0.117)).choose().fid == 25.0
    # below every point: the cheapest one that is good, not the cheapest one (FID 388)
    with pytest.raises(UsageError, match="no candidate of 's-k4' costs <= 0.01 GFLOPs/image; the "
                                         "cheapest no worse than the uniform schedule .* trial 1"):
        study_result(study, ExportRule(max_gflops=0.01)).choose()


def test_the_budget_stage2_ran_with_is_what_export_keeps_to(storage):
    # a stage-2 trial over the budget still counts (the best, here); the export keeps to it
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([496, 381, 257, 101], 1, 7.0, 0.125),
        ([496, 381, 257, 90], 3, 9.0, 0.110)], max_gflops=0.12)
    result = study_result(study)
    assert result.best.fid == 7.0 and result.choose().fid == 9.0
    assert result.rule() == "the lowest FID within 0.12 GFLOPs/image"
    assert result.as_dict()["export"]["fid"] == 9.0
    # a budget that buys nothing good: no export, said why, and the listing goes on
    tight = make_search(storage, [(UNIFORM, 68.0)], [([900, 500, 250, 20], 9, 300.0, 0.09)],
                        max_gflops=0.1, name="t-k4")
    pick, why = study_result(tight).exported()
    assert pick is None and why.startswith("every candidate of 't-k4' within 0.1 GFLOPs/image")
    assert study_result(tight).as_dict()["export"] is None


def test_links_that_are_not_a_search_of_ours(storage):
    # a stage-2 name whose stage 1 is gone: one line
    make_search(storage, [(UNIFORM, 68.0)], [(UNIFORM, 0, 68.0, FULL)], name="a-k4")
    optuna.delete_study(study_name="a-k4", storage=storage)
    with pytest.raises(UsageError, match="its stage-1 study 'a-k4' is not in this storage"):
        study_result(optuna.load_study(study_name="a-k4-stage2", storage=storage))
    # a stage-1 link to a study that does not link back (another program's): not its stage 2
    study = make_search(storage, [(UNIFORM, 68.0)], name="b-k4")
    optuna.create_study(study_name="someone-else", storage=storage).add_trial(
        create_trial(value=1.0))
    study.set_user_attr("stage2_study", "someone-else")
    result = study_result(study)
    assert result.stage2 is None and result.best.fid == 68.0


def test_an_older_study_without_gflops_or_a_uniform_trial(storage):
    study = make_search(storage, [([496, 381, 257, 101], 8.0)])  # the uniform never completed
    study.set_user_attr("full_gflops", None)
    result = study_result(study)
    assert result.uniform is None and result.front == [result.best]
    assert result.choose() == result.best
    with pytest.raises(UsageError, match="has not recorded its GFLOPs"):
        study_result(study, ExportRule(max_gflops=0.1)).choose()


def test_a_malformed_configuration_is_one_line(storage):
    study = make_search(storage, [(UNIFORM, 68.0)])
    study.set_user_attr("config", {**study.user_attrs["config"], "steps": "4"})
    # without our marker, a study whose record breaks the schema is another program's
    with pytest.raises(UsageError, match="was not made by autodiff_optuna"):
        study_result(study)
    record.mark(study)  # with it, ours but malformed
    with pytest.raises(UsageError, match=r"malformed \(steps missing or of the wrong type\)"):
        study_result(study)


def test_trials_are_counted_by_what_happened_to_them(storage):
    study = make_search(storage, [(UNIFORM, 68.0)])
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={PRUNED_AT: 125},
                                 intermediate_values={125: 80.0}))
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"duplicate_of": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    counts = study_result(study).counts[1]
    assert counts == {"complete": 1, "carried": 0, "stopped_early": 1, "redundant": 1,
                      "failed": 1, "interrupted": 0, "queued": 0, "running": 0}


def test_interrupted_and_queued_trials_are_named_as_such(storage):
    # what Ctrl-C leaves: the trial failed, its candidate queued again naming it
    study = make_search(storage, [(UNIFORM, 68.0)])
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 1}))
    study.enqueue_trial({})
    counts = study_result(study).counts[1]
    assert (counts["failed"], counts["interrupted"], counts["queued"], counts["running"]) == \
        (0, 1, 2, 0)
    assert describe_counts(counts) == \
        "1 complete, 0 failed, 1 interrupted (queued again), 2 queued"


def test_the_dashboard_note_is_the_result(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.881)],
                        [([491, 381, 258, 101], 1, 8.142, 0.1290)], name="x_[y](z)")
    text = note(study_result(study))
    assert "stage 2 trial 0" in text and "FID 8\\.142" in text and "FID 68\\.000" in text
    assert "x\\_\\[y\\]\\(z\\)" in text  # a stored name is text, not a Markdown link


@pytest.mark.slow  # 1.5 s on the idle machine: out of the fast subset
def test_best_export_and_list_agree_and_delete_removes_both_stages(tmp_path, capsys,
                                                                   monkeypatch):
    url = f"sqlite:///{tmp_path}/s.db"
    make_search(url, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([496, 381, 257, 101], 2, 8.7, 0.110)], name="digits-k4")
    assert main(["best", "--storage", url, "--json"]) == 0  # the name: digits-k4
    best = json.loads(capsys.readouterr().out)
    assert (best["best"]["trial"], best["export"]["stage"], best["export"]["fid"]) == (1, 2, 8.7)
    out = tmp_path / "fast.json"
    assert main(["export", "--storage", url, "--out", str(out)]) == 0
    assert "stage 2 trial 0" in capsys.readouterr().out
    exported = json.loads(out.read_text())
    assert (exported["provenance"]["stage"], exported["provenance"]["trial"]) == (2, 0)
    assert exported["fid"] == best["export"]["fid"] and exported["provenance"]["uniform_fid"] == 68
    assert main(["export", "--storage", url, "--out", str(out), "--max-gflops", "0.05"]) == 2
    capsys.readouterr()
    for form in ([], ["--json"]):  # refused before a line is printed, as text or as JSON
        assert main(["best", "--storage", url, "--max-gflops", "0.05", *form]) == 2
        assert capsys.readouterr().out == ""

    assert main(["list", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:3] == ["digits-k4", "digits", "4"]
    assert "2 complete  1 complete" in lines[1]  # no target recorded: the complete trials
    assert "8.000" in lines[1] and "68.000" in lines[1]
    # each stage's state: finished, or how far it got, with its trials that did not complete
    for name, target in (("digits-k4", 2), ("digits-k4-stage2", 3)):
        optuna.load_study(study_name=name, storage=url).set_user_attr("target", target)
    optuna.load_study(study_name="digits-k4", storage=url).add_trial(create_trial(
        state=TrialState.PRUNED, user_attrs={PRUNED_AT: 50}, intermediate_values={50: 9.0}))
    assert main(["list", "--storage", url]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "done 3/2, 1 stopped early  1/3  " in row

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", _end_of_input)
    assert main(["delete", "--storage", url, "--name", "digits-k4"]) == 0  # Ctrl-D: no
    assert "nothing deleted" in capsys.readouterr().out
    assert len(optuna.get_all_study_names(url)) == 2
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["delete", "--storage", url]) == 2  # which study: no default for a delete
    assert "delete needs the study" in capsys.readouterr().err
    assert main(["delete", "--storage", url, "--name", "digits-k4"]) == 2  # nobody to ask
    assert "--yes" in capsys.readouterr().err
    assert main(["delete", "--storage", url, "--name", "digits-k4-stage2", "--yes"]) == 0
    assert optuna.get_all_study_names(url) == ["digits-k4"]
    # the stage-1 study's stored result no longer names stage-2 trials
    stored = optuna.load_study(study_name="digits-k4", storage=url).user_attrs["result"]
    assert all(p["stage"] == 1 for p in stored["front"])
    assert main(["delete", "--storage", url, "--model", "digits", "--yes"]) == 0
    assert optuna.get_all_study_names(url) == []


def _end_of_input(prompt):
    raise EOFError


def test_the_stage1_line_and_an_eta_over_both_stages(storage):
    from autodiff_optuna.search.progress import EtaEstimator, stage_done_line

    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.881)])
    assert stage_done_line(study, 131.0) == (
        "stage 1 done in 2m11s: best [496, 381, 257, 101] FID 8.881 (trial 1), uniform FID "
        "68.000; 2 complete, 0 failed")
    assert stage_done_line(study, None).startswith("stage 1 already complete: best")
    # full trials of 3 s: 5 more here, then 20 of stage 2, each a full trial
    eta = EtaEstimator()
    for _ in range(5):
        eta.observe("full", 3.0)
    assert eta.remaining(5, later=20) == pytest.approx(5 * 3.0 + 20 * 3.0)


def test_the_eta_weighs_the_kinds_of_trial_still_to_come():
    """Synthetic durations, no clock: a full trial of 10 s, one stopped early of 1 s."""
    from autodiff_optuna.search.progress import EARLY, FULL, OTHER, EtaEstimator

    eta = EtaEstimator(smoothing=0.2)
    for _ in range(20):  # the first generation: nothing is stopped early yet
        eta.observe(FULL, 10.0)
    assert eta.remaining(10) == pytest.approx(100.0)
    before = eta.remaining(10)
    eta.observe(EARLY, 1.0)  # the first stopped early: the estimate moves, it does not jump
    assert 0.8 * before < eta.remaining(10) < before
    for _ in range(40):  # then half and half: about 5.5 s a trial
        eta.observe(FULL, 10.0)
        eta.observe(EARLY, 1.0)
    assert 5.0 <= eta.per_trial() <= 6.0
    # a slow outlier weighs on its own kind, smoothed; later (stage 2) trials are full ones
    steady = eta.remaining(10, later=10)
    eta.observe(FULL, 60.0)
    assert steady < eta.remaining(10, later=10) < 2.5 * steady
    assert eta.remaining(0, later=10) == pytest.approx(10 * eta.full_seconds())
    # trials that do not count (duplicates, failures) add their time to the counted ones
    eta = EtaEstimator()
    for _ in range(30):
        eta.observe(OTHER, 2.0)
        eta.observe(FULL, 10.0)
    assert eta.per_trial() == pytest.approx(12.0)
