"""Our own figures (Optuna's plots cover the rest): where a schedule puts its steps, the Pareto
front of both stages, which layers a stage-2 candidate skips at each step, stage 2's parameter
importances by layer and by step, and the log FID axis with the uniform schedule's line that
every FID plot shares."""

import html
import math

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from autodiff_optuna.search.results import Point


def log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda(t) = log(alpha_bar / (1 - alpha_bar)): the axis on which solvers take steps."""
    return np.log(alphas_cumprod) - np.log1p(-alphas_cumprod)


def schedule_figure(schedules: dict[str, list[int]], alphas_cumprod: np.ndarray) -> go.Figure:
    """Each schedule's steps as a row of points, on the time axis and on the log-SNR axis: a
    schedule that looks bunched in t can be even in log-SNR, which is what the solver sees."""
    lam = log_snr(alphas_cumprod)
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.2,
                        subplot_titles=("time step t (noise at the right)",
                                        "log-SNR (noise at the left)"))
    labels = list(schedules)
    for i, (label, steps) in enumerate(schedules.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        hover = [f"{label}<br>step {k + 1}: t = {t}, log-SNR = {lam[t]:.2f}"
                 for k, t in enumerate(steps)]
        for row, x in ((1, list(steps)), (2, [float(lam[t]) for t in steps])):
            fig.add_trace(go.Scatter(x=x, y=[label] * len(steps), mode="lines+markers",
                                     name=label, legendgroup=label, showlegend=row == 1,
                                     marker=dict(size=11, color=color), line=dict(color=color),
                                     text=hover, hoverinfo="text"), row=row, col=1)
    top = len(alphas_cumprod) - 1
    fig.update_xaxes(range=[-20, top + 20], row=1, col=1)
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1])
    fig.update_layout(title="Time steps: the chosen schedules against the uniform one",
                      height=300 + 100 * len(labels), margin=dict(l=140))
    return fig


# the marker of a point the page singles out, by its (first) role
MARKS = {"best": ("star", "#ff9f1c"), "exported": ("diamond", "#d62728")}
SET_ASIDE_LEGEND = "set aside: ahead on the confirmation's noise only"


def pareto_figure(points: list[Point], front: list[Point],
                  marked: list[tuple[list[str], Point]], uniform: Point | None,
                  full_gflops: float | None, min_saving: float,
                  set_aside: list[Point] = ()) -> go.Figure:
    """FID against GFLOPs per image: every complete trial of both stages faint, the thinned
    front (cheapest first) as a line, the ``marked`` points ((roles, point): the best, the
    exported, one marker a trial) large, the ``set_aside`` ones (``results.offered``) crossed,
    the uniform schedule's FID as a dashed line, on a log FID axis. Each point at the FID it is
    ranked by (confirmed, else expected). ``min_saving``: the share of the full network's
    GFLOPs the thinning asked for."""
    fig = go.Figure()
    for stage, color in ((1, "#7f7f7f"), (2, "#1f77b4")):
        trials = [p for p in points if p.stage == stage]
        if trials:
            fig.add_trace(go.Scatter(
                x=[p.gflops for p in trials], y=[p.fid for p in trials], mode="markers",
                name=f"stage {stage} trials", marker=dict(size=6, color=color, opacity=0.3),
                text=[_hover(p, full_gflops) for p in trials], hoverinfo="text"))
    fig.add_trace(go.Scatter(
        x=[p.gflops for p in front], y=[p.fid for p in front], mode="lines+markers",
        name="Pareto front (thinned)", line=dict(color="#17306b", width=2),
        marker=dict(size=9, color="#17306b"), text=[_hover(p, full_gflops) for p in front],
        hoverinfo="text"))
    if set_aside:
        # below the front, unexplained, a set-aside point would look like a result the page
        # forgot: it is one only the confirmation's draw of noise ranks there
        fig.add_trace(go.Scatter(
            x=[p.gflops for p in set_aside], y=[p.fid for p in set_aside], mode="markers",
            name=SET_ASIDE_LEGEND,
            marker=dict(size=11, symbol="x", color="#9467bd", line=dict(width=1, color="#222")),
            text=[f"set aside: ahead of stage 1's best by its confirmed FID alone<br>"
                  f"{_hover(p, full_gflops)}" for p in set_aside], hoverinfo="text"))
    for roles, p in marked:
        symbol, color = MARKS.get(roles[0], ("square", "#2ca02c"))
        label = " = ".join(roles)
        fig.add_trace(go.Scatter(
            x=[p.gflops], y=[p.fid], mode="markers",
            name=f"{label}: stage {p.stage} trial {p.trial}",
            marker=dict(size=17, symbol=symbol, color=color, line=dict(width=1, color="#222")),
            text=[f"{label}<br>{_hover(p, full_gflops)}"], hoverinfo="text"))
    fig.update_layout(title=f"Pareto front of both stages: FID against compute<br><sup>thinned: "
                            f"each point saves >= {min_saving:.1%} of the full network's GFLOPs "
                            "over the next better-FID one</sup>",
                      xaxis_title="GFLOPs per image",
                      yaxis_title="FID (confirmed; else expected from the search FID)",
                      height=600, legend=dict(orientation="h", yanchor="top", y=-0.15))
    return fid_axis(fig, uniform)


def _hover(p: Point, full_gflops: float | None) -> str:
    """Stage, trial, scores and time steps; the stored time steps as text (see ``plain``)."""
    text = f"stage {p.stage} trial {p.trial}<br>FID {p.fid:.3f}"
    if p.pooled:
        text += (f" (the mean of confirmed {p.confirmed_fid:.3f} and search "
                 f"{p.searched:.3f})")
    elif p.confirmed_fid is not None:
        text += f" (confirmed {p.confirmed_fid:.3f}, search {p.searched:.3f})"
    elif p.expected:
        text += f" expected (search {p.searched:.3f}, not confirmed)"
    if p.gflops is not None:
        share = p.share(full_gflops)
        text += f"<br>{p.gflops:.4f} GFLOPs/image" + (f" ({share:.1%})" if share else "")
    return text + f"<br>t = {plain(str(p.timesteps))}"


def fid_axis(figure: go.Figure, uniform: Point | None) -> go.Figure:
    """FID on a log axis, so that the few bad candidates (FIDs in the hundreds) do not flatten
    the range the search is decided in; with the uniform schedule's FID as a dashed line."""
    title = figure.layout.yaxis.title.text or "FID"
    values = [float(y) for trace in figure.data if getattr(trace, "y", None) is not None
              for y in trace.y if isinstance(y, (int, float)) and math.isfinite(y) and y > 0]
    if uniform is not None and uniform.fid > 0:
        values.append(uniform.fid)
    ticks = log_ticks(min(values), max(values)) if values else []
    figure.update_yaxes(type="log", title_text=title if "log" in title else f"{title} (log scale)",
                        tickvals=ticks or None, ticktext=[f"{t:g}" for t in ticks] or None)
    if uniform is None or not uniform.fid > 0:
        return figure
    figure.add_hline(y=uniform.fid, line=dict(dash="dash", color="#444", width=1.5))
    # plotly places a shape on a log axis at its value, but an annotation at its value's log10
    figure.add_annotation(x=0, xref="x domain", xanchor="left", y=math.log10(uniform.fid),
                          yref="y", yanchor="bottom", showarrow=False,
                          text=f"uniform (stage 1 trial {uniform.trial}): FID {uniform.fid:.3f}")
    return figure


def log_ticks(low: float, high: float) -> list[float]:
    """Round values to label a log axis from ``low`` to ``high`` with: 1-1.5-2-3-5-7 per
    decade, or 1-2-5 where that would be more than eight (plotly's own labels a short log range
    with single digits: 2, 3, 5 for 200, 300, 500)."""
    decades = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
    for steps in ((1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1,)):
        ticks = [m * 10.0 ** k for k in decades for m in steps if low <= m * 10.0 ** k <= high]
        if len(ticks) <= 8:
            break
    return ticks if len(ticks) >= 2 else []


def importance_figure(by_layer: dict[str, float], by_step: dict[str, float]) -> go.Figure:
    """Stage 2's parameter importances summed by group, side by side: by layer (a layer's mask
    bits at every step; the time steps as one group) and by step (its time step and its mask
    bits). 52 single mask bits would be 52 unreadable bars."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.3, subplot_titles=(
        "by layer (its mask bits at every step)", "by step (its time step and mask bits)"))
    top = max([*by_layer.values(), *by_step.values(), 0.01])
    for col, groups in ((1, by_layer), (2, by_step)):
        names = [plain(str(name)) for name in groups]  # layer names come from the study
        values = list(groups.values())
        fig.add_trace(go.Bar(x=values, y=names, orientation="h", showlegend=False,
                             text=[f"{v:.1%}" for v in values], textposition="outside",
                             hovertext=[f"{n}: {v:.1%}" for n, v in zip(names, values)],
                             hoverinfo="text", marker_color="#1f77b4"), row=1, col=col)
    fig.update_xaxes(tickformat=".0%", range=[0, top * 1.3])
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Parameter importances (fANOVA, FID), grouped",
                      height=220 + 26 * max(len(by_layer), len(by_step)), margin=dict(l=180))
    return fig


def mask_figure(candidates: list[dict], layers: list[str], shown: int) -> go.Figure:
    """Step x layer heatmap of which layers a candidate skips; a slider walks the Pareto front.

    ``candidates``: dicts with ``timesteps``, ``skip``, ``fid``, ``gflops``, ``trial`` and
    optionally ``stage`` and ``gflops_share`` (as ``Point.as_dict`` gives them);
    ``shown``: the index of the one displayed first.
    """
    # layer names come from the study: plotly renders its own subset of HTML in labels and
    # hover text, so markup stored there is shown as text, not interpreted
    layers = [plain(str(layer)) for layer in layers]
    candidates = [{**c, "skip": [[plain(str(name)) for name in s] for s in c["skip"]]}
                  for c in candidates]

    def frame(c):
        y = [f"step {k + 1}: t = {t}" for k, t in enumerate(c["timesteps"])]
        z = [[int(layer in skipped) for layer in layers] for skipped in c["skip"]]
        text = [[f"step {k + 1} (t = {t})<br>{layer}: {'skipped' if bit else 'runs'}"
                 for layer, bit in zip(layers, row)]
                for k, (t, row) in enumerate(zip(c["timesteps"], z))]
        which = f"trial {c['trial']}"
        if c.get("stage") is not None:
            which = f"stage {c['stage']} {which}"
        share = c.get("gflops_share")
        title = (f"Skipped layers of {which}: FID {c['fid']:.3f}, {c['gflops']:.4f} GFLOPs/image"
                 + (f" ({share:.1%} of the full network)" if share else ""))
        return y, z, text, title

    y, z, text, title = frame(candidates[shown])
    fig = go.Figure(go.Heatmap(z=z, x=layers, y=y, text=text, hoverinfo="text",
                               zmin=0, zmax=1, showscale=False, xgap=2, ygap=2,
                               colorscale=[[0, "#dfe8f5"], [1, "#d62728"]]))
    slider_steps = []
    for c in candidates:
        cy, cz, ctext, ctitle = frame(c)
        slider_steps.append(dict(method="update", label=f"{c['gflops']:.4f}",
                                 args=[{"y": [cy], "z": [cz], "text": [ctext]},
                                       {"title.text": ctitle}]))
    fig.update_layout(
        title=title, height=330 + 40 * len(y), margin=dict(b=150, l=130),
        sliders=[dict(active=shown, steps=slider_steps, y=-0.55, pad=dict(t=10),
                      currentvalue=dict(prefix="Pareto front (thinned), GFLOPs/image: "))])
    fig.update_xaxes(tickangle=-35)
    fig.update_yaxes(autorange="reversed")
    return fig


def plain(text: str) -> str:
    """``text`` as plotly shows it literally: its pseudo-HTML's special characters as the
    entities it decodes (``&amp;``, ``&lt;``, ``&gt;``; it knows no ``&quot;``)."""
    return html.escape(text, quote=False)
