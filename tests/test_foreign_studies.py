"""Which studies are ours (storage/record.py): a marker and a schema check that another
program's study cannot meet by accident. Foreign studies are listed as foreign, never deleted or
changed; ours made before the marker existed are still ours, and get it when next opened to be
written."""

import json

import optuna
import pytest
from test_results import UNIFORM, make_search

from autodiff_optuna import search
from autodiff_optuna.cli import main
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.storage import record

CONFIG = {"model": "digits", "steps": 4, "solver": "ddim", "samples": 100, "seed": 0}
# what other programs keep under the names our record uses
FOREIGN_ATTRS = {
    "config-string": {"config": "lr=0.1"},
    "config-list": {"config": [1, 2]},
    "config-empty": {"config": {}},
    "config-other-dict": {"config": {"model": "resnet", "steps": 4, "lr": 0.1}},
    "config-wrong-types": {"config": {**CONFIG, "steps": "4"}},
    "config-bool-steps": {"config": {**CONFIG, "steps": True}},
    "stage-string": {"config": CONFIG, "stage": "2"},
    "stage1-study-list": {"config": {**CONFIG, "stage": 2}, "stage": 2, "stage1_study": ["a"]},
    "stage2-study-dict": {"config": CONFIG, "stage2_study": {"a": 1}},
    "marker-string": {"config": CONFIG, "autodiff_optuna": "yes"},
}


def _foreign(url: str, name: str, attrs: dict) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return study


@pytest.mark.parametrize("kind", FOREIGN_ATTRS)
def test_a_foreign_study_is_not_ours(kind):
    assert not record.is_ours(FOREIGN_ATTRS[kind])


def test_ours_marked_or_made_before_the_marker():
    assert record.is_ours({"config": CONFIG, "stage": 1})
    assert record.is_ours({"config": CONFIG, "stage": 1, "autodiff_optuna": {"schema": 1}})
    assert record.is_ours({"config": {**CONFIG, "stage": 2}, "stage": 2, "stage1_study": "a"})


@pytest.mark.slow  # 2.1 s on the idle machine: out of the fast subset
def test_foreign_studies_are_listed_as_foreign_and_never_deleted(tmp_path, capsys, error_line):
    url = f"sqlite:///{tmp_path}/s.db"
    for kind, attrs in FOREIGN_ATTRS.items():
        _foreign(url, kind, attrs)
    make_search(url, [(UNIFORM, 68.0)], name="ours-k4")
    assert main(["list", "--storage", url, "--json"]) == 0
    rows = {row["study"]: row for row in json.loads(capsys.readouterr().out)}
    assert all(rows[kind]["foreign"] and rows[kind]["model"] is None for kind in FOREIGN_ATTRS)
    assert not rows["ours-k4"]["foreign"] and rows["ours-k4"]["best_fid"] == 68.0
    assert main(["list", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.split()[1] == "foreign" for line in lines) == len(FOREIGN_ATTRS)
    before = {s.study_name: s.user_attrs for s in optuna.get_all_study_summaries(url)}
    for kind in FOREIGN_ATTRS:
        assert main(["delete", "--storage", url, "--name", kind, "--yes"]) == 2
        assert "was not made by autodiff_optuna: not deleted" in error_line()
    after = {s.study_name: s.user_attrs for s in optuna.get_all_study_summaries(url)}
    assert after == before  # nothing deleted, nothing changed


def test_a_foreign_study_named_as_our_stage2_is_not_deleted_with_it(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    make_search(url, [(UNIFORM, 68.0)], name="ours-k4")
    # another program's study under the name our stage 2 would have, naming ours as its stage 1
    _foreign(url, "ours-k4-stage2", {"config": {}, "stage": 2, "stage1_study": "ours-k4"})
    assert main(["delete", "--storage", url, "--name", "ours-k4", "--yes"]) == 0
    assert optuna.get_all_study_names(url) == ["ours-k4-stage2"]


@pytest.mark.slow  # 2.4 s on the idle machine: out of the fast subset
def test_a_study_made_before_the_marker_gets_it_when_next_written(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    ctx = search.SearchContext.build(SearchConfig("digits", 3, samples=80, population=4))
    search.open_stage1(ctx, "digits-k3", url)
    study = optuna.load_study(study_name="digits-k3", storage=url)
    assert study.user_attrs[record.MARKER_ATTR] == {"schema": record.SCHEMA}
    # an earlier version's study: the same record without the marker
    legacy = {k: v for k, v in study.user_attrs.items() if k != record.MARKER_ATTR}
    optuna.delete_study(study_name="digits-k3", storage=url)
    old = optuna.create_study(study_name="digits-k3", storage=url)
    for key, value in legacy.items():
        old.set_user_attr(key, value)
    assert record.is_ours(old.user_attrs) and not record.is_marked(old.user_attrs)
    search.open_stage1(ctx, "digits-k3", url)  # recognised, resumed, and marked
    assert record.is_marked(optuna.load_study(study_name="digits-k3", storage=url).user_attrs)
