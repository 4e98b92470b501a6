"""The report as one HTML page that opens offline: plotly.js is inlined once in the head, each
figure adds only its data, and images are files beside the page."""

import html
import math

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
.meta, .note { color: #555; } .note { font-style: italic; }
.panel { margin: 1.2em 0; }
.result li { margin: 0.25em 0; }
.grids { display: grid; gap: 1.5em;
         grid-template-columns: repeat(auto-fill, minmax(max(360px, calc(50% - 0.75em)), 1fr)); }
.grids figure { margin: 0; }
.grids img { width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
td.text, th.text { text-align: left; }
"""


def page(title: str, meta: list[str], sections: list[tuple[str, list[str]]]) -> str:
    """``sections``: (heading, HTML blocks) in page order."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f'<p class="meta">{line}</p>' for line in meta]
    for heading, blocks in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body += blocks
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")


def figure(slug: str, title: str, fig: go.Figure | None, note: str = "") -> str:
    """A plot (its data only: plotly.js is in the head) or, without one, its note."""
    if fig is None:
        return (f'<div class="panel" id="{slug}"><h3>{html.escape(title)}</h3>'
                f'<p class="note">{html.escape(note)}</p></div>')
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{slug}",
                      config={"displaylogo": False, "responsive": True})
    return f'<div class="panel" id="{slug}">{div}</div>'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def items(lines: list[str]) -> str:
    """A list of plain-text lines (escaped here)."""
    return '<ul class="result">' + "".join(f"<li>{html.escape(line)}</li>"
                                          for line in lines) + "</ul>"


def grids(images: list[tuple[str, str]]) -> str:
    """(file name beside the page, caption) pairs, two a row at the page's width (each at
    least 360 pixels wide, scaled without smoothing), so that they can be compared by eye."""
    cells = [f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
             f"<figcaption>{html.escape(caption)}</figcaption></figure>"
             for src, caption in images]
    return '<div class="grids">' + "".join(cells) + "</div>"


def table(rows) -> str:
    """The top-candidates table (``candidates.Row``s). Every value read from a study is escaped:
    a database anyone could write to may hold markup where time steps or layer names belong."""
    head = ("<tr><th class='text'>candidate</th><th>stage</th><th>trial</th>"
            "<th class='text'>time steps</th><th>layer-steps skipped</th><th>FID (search)</th>"
            "<th>GFLOPs/image</th><th>% of full</th><th>held-out FID</th></tr>")
    lines = []
    for r in rows:
        skipped = "; ".join(f"step {k + 1}: {', '.join(map(str, s))}"
                            for k, s in enumerate(r.skip) if s)
        lines.append(
            f"<tr><td class='text'>{html.escape(r.label)}</td>"
            f"<td title='{html.escape(r.study or '')}'>{_text(r.stage)}</td>"
            f"<td>{_text(r.trial)}</td>"
            f"<td class='text'>{html.escape(str(r.timesteps))}</td>"
            f"<td title='{html.escape(skipped)}'>{r.skipped}</td>"
            f"<td>{_number(r.fid, 3)}</td><td>{_number(r.gflops, 4)}</td>"
            f"<td>{_share(r.share)}</td><td>{_number(r.heldout_fid, 3)}</td></tr>")
    return f"<table>{head}{''.join(lines)}</table>"


def _text(value) -> str:
    return "-" if value is None else html.escape(str(value))


def _share(value) -> str:
    number = _number(None if value is None else value * 100, 1)
    return number if number == "n/a" else f"{number}%"


def _number(value, digits: int) -> str:
    """A value, or n/a: none, not finite, or not a number at all (a cache entry edited by
    hand)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"
