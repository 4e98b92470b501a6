"""Our own figures (Optuna's plots cover the rest): where a schedule puts its steps, and which
layers a stage-2 candidate skips at each of them."""

import html

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots


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


def mask_figure(candidates: list[dict], layers: list[str], shown: int) -> go.Figure:
    """Step x layer heatmap of which layers a candidate skips; a slider walks the Pareto front.

    ``candidates``: dicts with ``timesteps``, ``skip``, ``fid``, ``gflops``, ``trial``;
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
        title = (f"Skipped layers of trial {c['trial']}: FID {c['fid']:.3f}, "
                 f"{c['gflops']:.4f} GFLOPs/image")
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
                      currentvalue=dict(prefix="Pareto front, GFLOPs/image: "))])
    fig.update_xaxes(tickangle=-35)
    fig.update_yaxes(autorange="reversed")
    return fig


def plain(text: str) -> str:
    """``text`` as plotly shows it literally: its pseudo-HTML's special characters as the
    entities it decodes (``&amp;``, ``&lt;``, ``&gt;``; it knows no ``&quot;``)."""
    return html.escape(text, quote=False)
