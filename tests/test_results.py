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
from autodiff_optuna.search.results import study_result, thin

FULL = 0.1295  # GFLOPs per image of the full network
UNIFORM = [750, 500, 250, 0]


def make_search(storage, stage1, stage2=(), max_gflops=None, name="s-k4"):
    """A two-stage search as the study command stores it, with these trials: stage 1
    ``(timesteps, fid)``, stage 2 ``(timesteps, skipped layer-steps, fid, gflops)``."""
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
            "timesteps": timesteps, "skip": skip, "gflops": gflops}))
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
    assert study_result(study, fid_tolerance=0.2).fast.fid == 9.0
    assert study_result(study, fid_tolerance=0.0).fast.fid == 8.0


def test_a_budget_worse_than_uniform_is_refused_naming_one_that_is_not(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([997, 570, 496, 258], 9, 388.0, 0.090),
        ([900, 500, 250, 20], 3, 25.0, 0.117)])
    result = study_result(study)
    with pytest.raises(UsageError) as refused:
        result.choose(0.1)
    message = str(refused.value)
    assert "better than the uniform schedule (FID 68.000" in message
    assert "stage 2 trial 1" in message and "--max-gflops 0.117)" in message
    assert result.choose(0.117).fid == 25.0  # the budget it names admits that point
    with pytest.raises(UsageError, match="no candidate of 's-k4' costs <= 0.01"):
        result.choose(0.01)


def test_an_infeasible_stage2_trial_is_no_result(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([496, 381, 257, 101], 0, 7.0, 0.125)], max_gflops=0.12)
    assert study_result(study).best.fid == 8.0


def test_trials_are_counted_by_what_happened_to_them(storage):
    study = make_search(storage, [(UNIFORM, 68.0)])
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={PRUNED_AT: 125},
                                 intermediate_values={125: 80.0}))
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"duplicate_of": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    counts = study_result(study).counts[1]
    assert counts == {"complete": 1, "stopped_early": 1, "redundant": 1, "failed": 1,
                      "running": 0}


def test_the_dashboard_note_is_the_result(storage):
    study = make_search(storage, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.881)],
                        [([491, 381, 258, 101], 1, 8.142, 0.1290)], name="x_[y](z)")
    text = note(study_result(study))
    assert "stage 2 trial 0" in text and "FID 8\\.142" in text and "FID 68\\.000" in text
    assert "x\\_\\[y\\]\\(z\\)" in text  # a stored name is text, not a Markdown link


def test_best_export_and_list_agree_and_delete_removes_both_stages(tmp_path, capsys,
                                                                   monkeypatch):
    url = f"sqlite:///{tmp_path}/s.db"
    make_search(url, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)], [
        ([496, 381, 257, 101], 2, 8.7, 0.110)], name="digits-k4")
    assert main(["best", "--storage", url, "--json"]) == 0  # the name: digits-k4
    best = json.loads(capsys.readouterr().out)
    assert (best["best"]["trial"], best["fast"]["stage"], best["fast"]["fid"]) == (1, 2, 8.7)
    out = tmp_path / "fast.json"
    assert main(["export", "--storage", url, "--out", str(out)]) == 0
    assert "stage 2 trial 0" in capsys.readouterr().out
    exported = json.loads(out.read_text())
    assert (exported["provenance"]["stage"], exported["provenance"]["trial"]) == (2, 0)
    assert exported["fid"] == best["fast"]["fid"] and exported["provenance"]["uniform_fid"] == 68
    assert main(["export", "--storage", url, "--out", str(out), "--max-gflops", "0.05"]) == 2
    capsys.readouterr()

    assert main(["list", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:4] == ["digits-k4", "digits", "4", "1+2"]
    assert "8.000" in lines[1] and "68.000" in lines[1]

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["delete", "--storage", url]) == 2  # nobody to ask: --yes or nothing
    assert "--yes" in capsys.readouterr().err
    assert main(["delete", "--storage", url, "--name", "digits-k4-stage2", "--yes"]) == 0
    assert optuna.get_all_study_names(url) == ["digits-k4"]
    assert main(["delete", "--storage", url, "--yes"]) == 0
    assert optuna.get_all_study_names(url) == []
