"""Optuna's own plots of a study, one list per stage; a plot Optuna cannot draw for this study
(parameter importances of a tiny or constant study, say) becomes a one-line note instead."""

import warnings
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis
from optuna.importance import FanovaImportanceEvaluator

from autodiff_optuna.errors import one_line
from autodiff_optuna.reporting.plots import plain
from autodiff_optuna.search import objectives
from autodiff_optuna.search.results import CONFIG_ATTR, complete_trials


@dataclass
class Panel:
    slug: str  # file name of its PNG, and its element id in the page
    title: str
    figure: go.Figure | None
    note: str = ""  # why there is no figure


def panels(study: optuna.Study) -> list[Panel]:
    prefix = f"stage{study.user_attrs.get('stage', 1)}-"
    with warnings.catch_warnings():  # some of these plots are experimental in Optuna
        warnings.simplefilter("ignore")
        made = _stage2(study) if len(study.directions) == 2 else _stage1(study)
    for panel in made:
        panel.slug = prefix + panel.slug
        if panel.figure is not None:
            _stored_values_as_text(panel.figure)
    return made


def _stored_values_as_text(figure: go.Figure) -> None:
    """Optuna's hover texts hold each trial's user attributes as JSON, its lines joined by
    ``<br>`` (the timeline, the Pareto front). Plotly renders a subset of HTML there, so markup
    stored in a user attribute would be interpreted: everything but those ``<br>``s is made
    plain text."""
    for trace in figure.data:
        text = getattr(trace, "text", None)
        if isinstance(text, str):
            trace.text = _plain_lines(text)
        elif text is not None and all(isinstance(t, str) for t in text):
            trace.text = [_plain_lines(t) for t in text]


def _plain_lines(text: str) -> str:
    return "<br>".join(plain(line) for line in text.split("<br>"))


def _stage1(study: optuna.Study) -> list[Panel]:
    steps = _step_params(study)
    return [
        Panel("history", "Optimization history", vis.plot_optimization_history(
            study, target_name="FID")),
        Panel("timeline", "Timeline", vis.plot_timeline(study)),
        Panel("parallel", "Parallel coordinates", vis.plot_parallel_coordinate(
            study, params=steps, target_name="FID")),
        _importances(study, target=None, target_name="FID"),
    ]


def _stage2(study: optuna.Study) -> list[Panel]:
    def fid(t):
        return objectives.fid(t)

    steps = _step_params(study)
    return [
        Panel("pareto", "Pareto front", vis.plot_pareto_front(
            study, target_names=["FID", "GFLOPs/image"])),
        _hypervolume(study),
        Panel("history", "Optimization history (FID)", vis.plot_optimization_history(
            study, target=fid, target_name="FID")),
        Panel("timeline", "Timeline", vis.plot_timeline(study)),
        Panel("parallel", "Parallel coordinates (time steps)", vis.plot_parallel_coordinate(
            study, params=steps, target=fid, target_name="FID")),
        _importances(study, target=fid, target_name="FID"),
    ]


def _step_params(study: optuna.Study) -> list[str]:
    """The time-step parameters t0..t{K-1}; stage 2's per-layer mask bits would bury them."""
    return [f"t{i}" for i in range(study.user_attrs.get(CONFIG_ATTR, {}).get("steps", 0))]


def _importances(study: optuna.Study, **target) -> Panel:
    title = "Parameter importances (fANOVA, FID)"
    try:
        figure = vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                            **target)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:  # too few or constant trials
        return Panel("importances", title, None,
                     f"Parameter importances could not be computed for this study "
                     f"({one_line(err)}).")
    return Panel("importances", title, figure)


def _hypervolume(study: optuna.Study) -> Panel:
    """Reference point: 10% beyond the worst FID and GFLOPs any complete trial reached, so every
    trial of the study adds volume."""
    values = [t.values for t in complete_trials(study)]
    reference = [max(v[i] for v in values) * 1.1 for i in range(2)]
    figure = vis.plot_hypervolume_history(study, reference_point=reference)
    return Panel("hypervolume", f"Hypervolume history (reference FID {reference[0]:.1f}, "
                 f"{reference[1]:.4f} GFLOPs)", figure)
