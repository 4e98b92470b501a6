"""The plots of one stage of a search, one list per stage: Optuna's own, with FID on a log axis
and the uniform schedule's FID as a line, and ours where Optuna's would mislead or be
unreadable: the Pareto front of both stages as the search's result thins it, the skip masks of
that front, and stage 2's importances by layer and by step instead of one bar per mask bit. A
plot that cannot be drawn for this study (parameter importances of a tiny or constant study,
say) becomes a one-line note instead."""

import warnings
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from autodiff_optuna.errors import one_line
from autodiff_optuna.reporting import candidates, plots
from autodiff_optuna.reporting.plots import plain
from autodiff_optuna.search import objectives
from autodiff_optuna.search.encoding import CandidateSpace
from autodiff_optuna.search.results import CONFIG_ATTR, Point, StudyResult, complete_trials
from autodiff_optuna.storage import record


@dataclass
class Panel:
    slug: str  # file name of its PNG, and its element id in the page
    title: str
    figure: go.Figure | None
    note: str = ""  # why there is no figure


def panels(study: optuna.Study, result: StudyResult | None = None,
           exported: Point | None = None) -> list[Panel]:
    """The plots of ``study``, one stage of a search. With its ``result`` (``study_result``)
    the FID plots have the uniform schedule's line, and stage 2's start with the Pareto front
    of both stages and the skip masks of its stage-2 points, ``exported`` (default: what
    ``export`` writes, ``result.exported()``) marked and shown first; without it, those two
    are left out."""
    prefix = f"stage{record.stage_of(study.user_attrs)}-"
    uniform = result.uniform if result is not None else None
    with warnings.catch_warnings():  # some of these plots are experimental in Optuna
        warnings.simplefilter("ignore")
        if len(study.directions) == 1:
            made = _stage1(study, uniform)
        else:
            made = _stage2(study, uniform)
            if result is not None:  # ours first: the search's result and its masks
                exported = exported if exported is not None else result.exported()[0]
                made[:0] = [pareto_panel(result, exported), _masks(study, result, exported)]
    for panel in made:
        panel.slug = prefix + panel.slug
    return made


def _optuna(figure: go.Figure) -> go.Figure:
    """One of Optuna's figures, its stored values made plain text."""
    _stored_values_as_text(figure)
    return figure


def _stored_values_as_text(figure: go.Figure) -> None:
    """Optuna's hover texts hold each trial's user attributes as JSON, its lines joined by
    ``<br>`` (the timeline). Plotly renders a subset of HTML there, so markup
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


def _stage1(study: optuna.Study, uniform: Point | None) -> list[Panel]:
    steps = _step_params(study)
    return [
        _history(study, uniform, "Optimization history"),
        Panel("timeline", "Timeline", _optuna(vis.plot_timeline(study))),
        Panel("parallel", "Parallel coordinates", _optuna(vis.plot_parallel_coordinate(
            study, params=steps, target_name="FID"))),
        _importances(study, target=None, target_name="FID"),
    ]


def _stage2(study: optuna.Study, uniform: Point | None) -> list[Panel]:
    def fid(t):
        return objectives.fid(t)

    steps = _step_params(study)
    return [
        _hypervolume(study),
        _history(study, uniform, "Optimization history (FID)", target=fid),
        Panel("timeline", "Timeline", _optuna(vis.plot_timeline(study))),
        Panel("parallel", "Parallel coordinates (time steps)", _optuna(
            vis.plot_parallel_coordinate(study, params=steps, target=fid, target_name="FID"))),
        _grouped_importances(study),
    ]


def _history(study: optuna.Study, uniform: Point | None, title: str, **target) -> Panel:
    figure = _optuna(vis.plot_optimization_history(study, target_name="FID", **target))
    return Panel("history", title, plots.fid_axis(figure, uniform))


def pareto_panel(result: StudyResult, exported: Point | None) -> Panel:
    """Ours rather than Optuna's plot_pareto_front, which marks stage 2's own unthinned front:
    this one marks the front of both stages that ``best`` and ``export`` read."""
    marked = candidates.by_trial([(role, p) for role, p in (("best", result.best),
                                                            ("exported", exported)) if p])
    figure = plots.pareto_figure(candidates.scored(result), result.front, marked,
                                 result.uniform, result.full_gflops, result.min_saving,
                                 result.set_aside)
    return Panel("pareto", "Pareto front of both stages", figure)


def _masks(stage2: optuna.Study, result: StudyResult, exported: Point | None) -> Panel:
    """The skip masks along the thinned front, cheapest first; shown first, the exported point
    when it is stage 2's, else the front's cheapest stage-2 point."""
    title = "Skipped layers per step"
    front = result.front
    in_stage2 = [i for i, p in enumerate(front) if p.stage == 2]
    if not in_stage2:
        return Panel("masks", title, None, "No stage-2 candidate is on the thinned Pareto front: "
                     "there is no skip mask to show.")
    trials = [(p.stage, p.trial) for p in front]
    key = (exported.stage, exported.trial) if exported is not None else None
    shown = trials.index(key) if key in trials and key[0] == 2 else in_stage2[0]
    figure = plots.mask_figure([p.as_dict(result.full_gflops) for p in front],
                               stage2.user_attrs.get(record.LAYERS_ATTR, []), shown)
    return Panel("masks", title, figure)


def _step_params(study: optuna.Study) -> list[str]:
    """The time-step parameters t0..t{K-1}; stage 2's per-layer mask bits would bury them."""
    return [f"t{i}" for i in range(study.user_attrs.get(CONFIG_ATTR, {}).get("steps", 0))]


def _importances(study: optuna.Study, **target) -> Panel:
    title = "Parameter importances (fANOVA, FID)"
    try:
        figure = vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                            **target)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:  # too few or constant trials
        return _no_importances(title, err)
    return Panel("importances", title, _optuna(figure))


def _grouped_importances(stage2: optuna.Study) -> Panel:
    """Stage 2's importances summed by layer and by step (``group_importances``)."""
    title = "Parameter importances (fANOVA, FID), by layer and by step"
    try:
        importances = get_param_importances(stage2, evaluator=FanovaImportanceEvaluator(seed=0),
                                            target=objectives.fid)
    except (RuntimeError, ValueError, ZeroDivisionError) as err:  # too few or constant trials
        return _no_importances(title, err)
    by_layer, by_step = group_importances(importances, len(_step_params(stage2)),
                                          stage2.user_attrs.get(record.LAYERS_ATTR, []))
    return Panel("importances", title, plots.importance_figure(by_layer, by_step))


SOLVER_GROUP = "solver"  # the bar of the searched per-step rules


def group_importances(importances: dict[str, float], steps: int,
                      layers: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Stage-2 parameter importances summed by layer ("time steps": t0..t{K-1}; a layer: its
    mask bits at every step; "solver": the searched rules' orders, correctors and methods,
    where the study searched them) and by step ("step k": its time step, its mask bits and its
    rule), in execution order. A parameter Optuna left out (one no trial varied) counts 0."""
    by_layer = {"time steps": 0.0, **dict.fromkeys(layers, 0.0)}
    by_step = {f"step {k + 1}": 0.0 for k in range(steps)}
    rules = {f"{kind}{k}": k for k in range(steps) for kind in ("o", "c", "p")}
    if any(name in importances for name in rules):
        by_layer[SOLVER_GROUP] = 0.0
        for name, k in rules.items():
            by_layer[SOLVER_GROUP] += importances.get(name, 0.0)
            by_step[f"step {k + 1}"] += importances.get(name, 0.0)
    for k in range(steps):
        time = importances.get(f"t{k}", 0.0)
        by_layer["time steps"] += time
        by_step[f"step {k + 1}"] += time
        for layer in layers:
            bit = importances.get(CandidateSpace.mask_name(k, layer), 0.0)
            by_layer[layer] += bit
            by_step[f"step {k + 1}"] += bit
    return by_layer, by_step


def _no_importances(title: str, err: Exception) -> Panel:
    return Panel("importances", title, None, f"Parameter importances could not be computed for "
                 f"this study ({one_line(err)}).")


def _hypervolume(study: optuna.Study) -> Panel:
    """Reference point: 10% beyond the worst FID and GFLOPs any complete trial reached, so every
    trial of the study adds volume."""
    values = [t.values for t in complete_trials(study)]
    reference = [max(v[i] for v in values) * 1.1 for i in range(2)]
    figure = _optuna(vis.plot_hypervolume_history(study, reference_point=reference))
    return Panel("hypervolume", f"Hypervolume history (reference FID {reference[0]:.1f}, "
                 f"{reference[1]:.4f} GFLOPs)", figure)
