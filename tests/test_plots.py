"""The report's own figures and groupings, on made-up points (no study, no model)."""

import json
import math

import plotly.graph_objects as go
import pytest

from autodiff_optuna.reporting import candidates, plots
from autodiff_optuna.reporting.optuna_plots import group_importances
from autodiff_optuna.search.results import Point

MARKUP = "<img src=x onerror=alert(1)>"


def _point(stage, trial, fid, gflops, timesteps=(600, 200), skip=((), ())) -> Point:
    return Point(stage, f"s{stage}", trial, list(timesteps), [list(s) for s in skip], fid, gflops)


def test_importances_are_summed_by_layer_and_by_step():
    layers = ["down", "mid", "up"]
    importances = {"t0": 0.3, "t1": 0.1, "m0:down": 0.2, "m1:down": 0.05, "m1:up": 0.35}
    by_layer, by_step = group_importances(importances, 2, layers)
    assert by_layer == pytest.approx({"time steps": 0.4, "down": 0.25, "mid": 0.0, "up": 0.35})
    assert list(by_layer) == ["time steps", *layers]  # execution order, every layer
    assert by_step == pytest.approx({"step 1": 0.5, "step 2": 0.5})


def test_grouped_importances_figure_shows_stored_layer_names_as_text():
    figure = plots.importance_figure({"time steps": 0.6, MARKUP: 0.4}, {"step 1": 1.0})
    assert list(figure.data[0].y) == ["time steps", plots.plain(MARKUP)]
    assert "<img" not in json.dumps(figure.to_plotly_json())


@pytest.mark.parametrize("low, high, ticks", [
    (38, 420, [50, 70, 100, 150, 200, 300]),
    (5, 400, [5, 10, 20, 50, 100, 200]),  # 1-2-5 where 1-1.5-2-3-5-7 would crowd it
    (0.5, 3000, [1, 10, 100, 1000]),
    (8.1, 9.5, []),  # under two round values: plotly's own ticks
])
def test_log_ticks_are_round_values_in_range(low, high, ticks):
    assert plots.log_ticks(low, high) == pytest.approx(ticks)


def test_fid_axis_is_log_with_the_uniform_line_at_its_fid():
    figure = go.Figure(go.Scatter(x=[0, 1, 2], y=[400.0, 60.0, 9.0]))
    uniform = _point(1, 0, 60.0, 1.0)
    plots.fid_axis(figure, uniform)
    assert figure.layout.yaxis.type == "log"
    assert [s.y0 for s in figure.layout.shapes] == [60.0]
    [label] = figure.layout.annotations
    assert label.y == pytest.approx(math.log10(60.0))  # where a log axis puts 60
    assert list(figure.layout.yaxis.tickvals) == pytest.approx([10, 20, 50, 100, 200])
    bare = plots.fid_axis(go.Figure(go.Scatter(y=[3.0, 2.0])), None)  # no baseline: no line
    assert bare.layout.yaxis.type == "log" and not bare.layout.shapes


def test_pareto_figure_hover_names_stage_and_trial_and_shows_stored_steps_as_text():
    points = [_point(1, 0, 50.0, 1.0), _point(1, 1, 30.0, 1.0, timesteps=MARKUP),
              _point(2, 4, 40.0, 0.8, skip=(("mid",), ()))]
    front = [points[2], points[1]]
    figure = plots.pareto_figure(points, front, [(["best"], points[1]), (["exported"], points[2])],
                                 points[0], 1.0, 0.005)
    traces = {t.name: t for t in figure.data}
    assert traces["stage 2 trials"].text[0].startswith("stage 2 trial 4<br>FID 40.000<br>"
                                                       "0.8000 GFLOPs/image (80.0%)")
    assert list(traces["Pareto front (thinned)"].x) == [0.8, 1.0]
    assert set(traces) >= {"best: stage 1 trial 1", "exported: stage 2 trial 4"}
    assert "<img" not in json.dumps(figure.to_plotly_json())


def test_a_trial_with_several_roles_is_one_entry_named_by_all():
    a, b = _point(1, 0, 9.0, 1.0), _point(2, 3, 8.0, 0.9)
    merged = candidates.by_trial([("uniform", a), ("best", b), ("exported", b), ("front", b),
                                  ("front", b)])
    assert merged == [(["uniform"], a), (["best", "exported", "front"], b)]


def test_mask_titles_name_stage_trial_and_share():
    point = _point(2, 7, 8.25, 0.09, skip=(("mid",), ()))
    figure = plots.mask_figure([point.as_dict(0.1)], ["down", "mid"], 0)
    assert figure.layout.title.text == ("Skipped layers of stage 2 trial 7: FID 8.250, 0.0900 "
                                        "GFLOPs/image (90.0% of the full network)")
    assert [list(row) for row in figure.data[0].z] == [[0, 1], [0, 0]]
