"""PNG copies of the page's plots through kaleido, which drives a Chrome or Chromium it finds on
the machine (Debian's ``chromium`` package will do). Without one the page is still written,
and the report says so in one line: the PNGs are a convenience, the page is the report."""

import importlib.util
import os
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from autodiff_optuna.errors import one_line

WIDTH, HEIGHT = 1000, 600


def find_browser() -> str | None:
    """The browser kaleido would use (its own search, through choreographer, kaleido's browser
    driver: BROWSER_PATH, PATH, the usual places). None where there is none, or where
    choreographer is absent or its API has changed: the caller prints its one-line notice."""
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 (not installed, or another choreographer API)
        return None
    return path if isinstance(path, (str, os.PathLike)) and os.access(path, os.X_OK) else None


def write_pngs(figures: dict[str, go.Figure], directory: Path) -> str:
    """Write ``<directory>/<slug>.png`` for each figure; returns a one-line notice when they
    could not be written, else an empty string."""
    if importlib.util.find_spec("kaleido") is None:
        return "PNG copies of the plots were skipped: kaleido is not installed."
    if find_browser() is None:
        return ("PNG copies of the plots were skipped: kaleido found no Chrome or Chromium "
                "(on Debian: apt-get install chromium).")
    slugs = list(figures)
    try:  # one browser for all of them: starting it costs more than a plot
        directory.mkdir(parents=True, exist_ok=True)
        pio.write_images([figures[s] for s in slugs], [directory / f"{s}.png" for s in slugs],
                         width=WIDTH, height=[_height(figures[s]) for s in slugs])
    # a browser that fails to start or crashes mid-way: the page is still worth writing
    except Exception as err:  # noqa: BLE001
        return f"PNG copies of the plots failed ({_reason(err)}); the page has every plot."
    return ""


def _reason(err: Exception) -> str:
    """kaleido's errors carry several sentences as separate arguments: the first says it."""
    first = err.args[0] if err.args and isinstance(err.args[0], str) else err
    return one_line(first) if isinstance(first, BaseException) else first.splitlines()[0]


def _height(figure: go.Figure) -> int:
    return int(figure.layout.height or HEIGHT)
