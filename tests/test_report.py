"""`report`, `dashboard` and the inspection notebook, on one small two-stage digits study."""

import html
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import CEILING, error_line
from PIL import Image

from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.reporting import artifacts, optuna_plots, png
from autodiff_optuna.reporting.plots import plain
from autodiff_optuna.reporting.report import Options, build
from autodiff_optuna.search.fidelity import is_carried
from autodiff_optuna.search.results import ExportRule, confirmed_fids, study_result
from autodiff_optuna.storage import artifacts_dir, open_storage
from autodiff_optuna.storage.record import HELDOUT_FID_ATTR

ROOT = Path(__file__).resolve().parents[1]
COMPLETE = optuna.trial.TrialState.COMPLETE
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (CI installs Debian's: apt-get install chromium)")
GRID = 16
ARTIFACT = f"samples-n{GRID}-seed0.png"
STAGE1_SLUGS = ["stage1-history", "stage1-timeline", "stage1-parallel"]
STAGE2_SLUGS = ["stage2-pareto", "stage2-hypervolume", "stage2-masks", "stage2-history",
                "stage2-timeline", "stage2-parallel"]


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    """Stage 1 (6 trials) and stage 2 (6 trials) of a 3-step digits search: ~15 s."""
    url = f"sqlite:///{tmp_path_factory.mktemp('study')}/s.db"
    assert main(["study", "--model", "digits", "--steps", "3", "--trials", "6",
                 "--stage2-trials", "6", "--samples", "80", "--population", "4", "--quiet",
                 "--solver", "ddim", "--storage", url]) == 0
    return url


@pytest.fixture(scope="module")
def report(url, tmp_path_factory) -> dict:
    """The stage-1 report, with PNG copies where a browser is present."""
    out = tmp_path_factory.mktemp("report") / "digits-k3"
    argv = ["report", "--name", "digits-k3", "--storage", url, "--out", str(out),
            "--grid", str(GRID), "--heldout-samples", "80", "--top", "3", "--device", "cpu"]
    code, stdout, stderr = _run_main(argv)
    assert code == 0, stderr
    return {"out": out, "html": (out / "index.html").read_text(), "stderr": stderr,
            "stdout": stdout, "argv": argv}


def _run_main(argv) -> tuple[int, str, str]:
    """main() in this process, with its stdout and stderr (capsys is function-scoped)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _study(url, name="digits-k3") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _uniform_and_best(url):
    stage1 = _study(url)
    complete = stage1.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    uniform = next(t for t in complete
                   if t.user_attrs["timesteps"] == stage1.user_attrs["spacings"]["uniform"])
    return stage1, uniform, min(complete, key=lambda t: t.value)


def _chosen(result) -> dict[tuple[int, int], list[str]]:
    """(stage, trial) -> roles of the points the page singles out, as the result defines them:
    the uniform baseline, the best, the exported (``fast``) point."""
    chosen: dict[tuple[int, int], list[str]] = {}
    for role, point in (("uniform", result.uniform), ("best", result.best),
                        ("exported", result.choose())):
        chosen.setdefault((point.stage, point.trial), []).append(role)
    return chosen


def _table_rows(page: str) -> list[list[str]]:
    """The candidates table's rows, as the text of their cells."""
    table = page.split("<table>")[1].split("</table>")[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.split("<tr>")[2:]]


# -- the page ------------------------------------------------------------------------------------

@pytest.mark.slow  # builds a whole report (held-out FIDs, grids, PNGs)
def test_page_holds_every_part_and_opens_offline(report, url):
    page, out = report["html"], report["out"]
    assert report["stdout"].strip() == f"wrote {out / 'index.html'}"
    for slug in ["schedules"] + STAGE1_SLUGS + STAGE2_SLUGS:
        assert f'id="plot-{slug}"' in page, slug
    assert 'id="stage1-importances"' in page and 'id="stage2-importances"' in page
    # plotly.js inlined exactly once; nothing fetched from elsewhere
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:500]) == 1
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
    assert "Stage 1: digits-k3" in page and "Stage 2: digits-k3-stage2" in page
    assert "`" not in _prose(page) and '"evaluate --samples 80 --seed 0"' in html.unescape(page)
    # progress lines on stderr for the long parts
    assert "held-out FID 1/" in report["stderr"] and "sample grid: uniform" in report["stderr"]


@pytest.mark.slow  # builds a whole report
def test_grids_and_the_result_are_the_ones_best_and_export_give(report, url):
    """One grid per chosen trial (uniform, best, exported: a trial that is several is one grid
    named by all), each caption naming its stage, trial, FID and share of the full network's
    GFLOPs; the result in words as ``study_result`` has it, the uniform FID among it."""
    page, out = report["html"], report["out"]
    result = study_result(_study(url))
    chosen = _chosen(result)
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == [f"samples-{'-'.join(roles)}.png" for roles in chosen.values()]
    assert all((out / src).is_file() for src in images)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    full = result.full_gflops
    points = {(p.stage, p.trial): p for p in (result.uniform, result.best, result.choose())}
    assert captions == [html.escape(f"{' = '.join(roles)}: {points[key].describe(full)}")
                        for key, roles in chosen.items()]
    assert all("% of the full network)" in c for c in captions)
    for line in (f"best: {result.best.describe(full)}", result.choose().describe(full),
                 f"FID {result.uniform.fid:.3f}", f"stage 1 trial {result.uniform.trial}"):
        assert html.escape(line) in page.split("<h2>Schedules</h2>")[0], line


@pytest.mark.slow  # builds a whole report
def test_table_names_each_trial_by_all_it_is(report, url):
    """Uniform, best, exported, the thinned front and stage 1's top 3: one row a trial, its
    stage, trial, FID, GFLOPs and share of the full network's."""
    result = study_result(_study(url))
    rows = _table_rows(report["html"])
    by_trial = {(int(r[1]), int(r[2])): r for r in rows}
    assert len(by_trial) == len(rows)  # one row a trial
    assert rows[0][0].startswith("uniform") and by_trial[(1, result.uniform.trial)] == rows[0]
    assert "best" in by_trial[(result.best.stage, result.best.trial)][0].split(", ")
    assert "exported" in by_trial[(result.choose().stage, result.choose().trial)][0].split(", ")
    front = {key for key, r in by_trial.items() if "front" in r[0].split(", ")}
    assert front == {(p.stage, p.trial) for p in result.front}  # thinned
    ranked = [r for r in rows if re.search(r"stage 1 #\d", r[0])]
    assert len(ranked) == 3 and all(r[1] == "1" for r in ranked)
    for point in result.front:
        row = by_trial[(point.stage, point.trial)]
        assert row[5:8] == [f"{point.fid:.3f}", f"{point.gflops:.4f}",
                            f"{point.share(result.full_gflops) * 100:.1f}%"]


@pytest.mark.slow  # builds a whole report
def test_table_has_search_and_heldout_fid_as_evaluate_computes_it(report, url, capsys):
    stage1, uniform, best = _uniform_and_best(url)
    table = report["html"].split("<table>")[1].split("</table>")[0]
    shown = confirmed_fids(stage1).get(best.number, best.value)  # ranked by the confirmed FID
    assert f"<td>{shown:.3f}</td>" in table and str(best.user_attrs["timesteps"]) in table
    assert "n/a" not in table  # every row has FID, GFLOPs and held-out FID
    cached = {json.dumps(c["timesteps"]): c["fid"] for c in stage1.user_attrs["heldout_fid"]
              if not any(c["skip"])}
    assert f"<td>{cached[json.dumps(uniform.user_attrs['timesteps'])]:.3f}</td>" in table
    # the same number as `evaluate` on held-out noise: one code path
    steps = ",".join(map(str, uniform.user_attrs["timesteps"]))
    assert main(["evaluate", "--model", "digits", "--timesteps", steps, "--samples", "80",
                 "--json"]) == 0
    held_out = json.loads(capsys.readouterr().out)["fid"]
    assert cached[json.dumps(uniform.user_attrs["timesteps"])] == pytest.approx(held_out)
    assert held_out != pytest.approx(uniform.value)  # not the search noise


@pytest.mark.slow  # builds a whole report
def test_grids_are_the_schedules_on_the_same_noise(report, url, tmp_path):
    from autodiff_optuna.export import SearchedSchedule
    from autodiff_optuna.schedule_sampling import sample, save_grid

    result = study_result(_study(url))
    grids = {}
    for (stage, trial), roles in _chosen(result).items():
        point = next(p for p in (result.uniform, result.best, result.choose())
                     if (p.stage, p.trial) == (stage, trial))
        again = tmp_path / f"{'-'.join(roles)}.png"
        save_grid(sample(SearchedSchedule("digits", "ddim", point.timesteps, point.skip),
                         GRID, seed=0), again)
        grids[again.name] = np.asarray(Image.open(again))
        assert np.array_equal(grids[again.name], np.asarray(
            Image.open(report["out"] / f"samples-{again.name}")))
    if len(grids) > 1:  # different schedules, different images from the same noise
        first, *others = grids.values()
        assert not any(np.array_equal(first, other) for other in others)


@pytest.mark.slow  # builds a whole report
def test_grids_are_artifacts_of_their_trials_once(report, url):
    storage = open_storage(url)
    stage1, uniform, _ = _uniform_and_best(url)
    stage2 = _study(url, "digits-k3-stage2")
    result = study_result(stage1)
    store_dir = artifacts_dir(url)
    assert store_dir == Path(url[len("sqlite:///"):]).parent / "artifacts"
    files_before = sorted(store_dir.iterdir())
    with_grids = {(s.user_attrs.get("stage", 1), t.number) for s in (stage1, stage2)
                  for t in s.trials if ARTIFACT in artifacts.filenames(storage, s, t)}
    assert with_grids == set(_chosen(result))
    assert artifacts.filenames(storage, stage1, uniform) == [ARTIFACT]
    # a rerun uploads nothing again and samples no held-out FID again (cached in the study)
    code, _, stderr = _run_main(report["argv"][:-2] + ["--no-png"])
    assert code == 0, stderr
    assert "held-out FID 1/" not in stderr
    assert sorted(store_dir.iterdir()) == files_before
    assert artifacts.filenames(storage, stage1, uniform) == [ARTIFACT]
    assert len(files_before) == len(with_grids)


@pytest.mark.slow  # builds a whole report and starts the dashboard
def test_dashboard_serves_each_grid_under_its_trial(report, url, tmp_path):
    """... and Ctrl-C stops it as it stops any command: exit code 130, no traceback."""
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "dashboard.log"  # a file, not a pipe nobody reads (a full one blocks it)
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "autodiff_optuna", "dashboard",
                                 "--storage", url, "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        summaries = _get_json(f"{base}/api/studies", server=proc)
        ids = {s["study_name"]: s["study_id"] for s in summaries["study_summaries"]}
        stage1 = _get_json(f"{base}/api/studies/{ids['digits-k3']}?after=0")
        _, uniform, _ = _uniform_and_best(url)
        trial = next(t for t in stage1["trials"] if t["number"] == uniform.number)
        [meta] = trial["artifacts"]
        assert meta["filename"] == ARTIFACT and meta["mimetype"] == "image/png"
        grid = next(report["out"].glob("samples-uniform*.png"))
        with urllib.request.urlopen(f"{base}/artifacts/{ids['digits-k3']}/{trial['trial_id']}/"
                                    f"{meta['artifact_id']}", timeout=CEILING) as response:
            assert response.read() == grid.read_bytes()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=CEILING) == 130
        err = log.read_text()
        assert f"optuna-dashboard on {base}/" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        print(f"dashboard stderr:\n{log.read_text()[-4000:]}")  # pytest shows it on a failure


def _get_json(url: str, server: subprocess.Popen | None = None):
    """GET ``url`` as JSON; with ``server``, retried until that server answers (while it runs)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=CEILING) as response:
                return json.load(response)
        except OSError:
            if server is None or server.poll() is not None:
                raise
            time.sleep(0.3)


@pytest.mark.slow  # builds a whole report
@needs_chromium
def test_png_copies_of_every_plot(report):
    pngs = sorted(p.stem for p in (report["out"] / "png").glob("*.png"))
    assert {"schedules", *STAGE1_SLUGS, *STAGE2_SLUGS} <= set(pngs)
    for name in pngs:
        image = Image.open(report["out"] / "png" / f"{name}.png").convert("RGB")
        assert image.width == png.WIDTH and len(image.getcolors(1 << 24)) > 20


def test_without_a_browser_the_page_alone_and_one_notice(url, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(png, "find_browser", lambda: None)
    assert main(["report", "--name", "digits-k3", "--storage", url, "--out", str(tmp_path),
                 "--grid", "4", "--heldout-samples", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("PNG copies")]
    assert notices == [("PNG copies of the plots were skipped: kaleido found no Chrome or "
                        "Chromium (on Debian: apt-get install chromium).")]
    assert not (tmp_path / "png").exists()
    page = (tmp_path / "index.html").read_text()
    assert "kaleido found no Chrome or Chromium" in page
    assert "`" not in _prose(page)  # what the reader sees: no Markdown's code quotes


def _prose(page: str) -> str:
    """The page without its scripts and style: the text a reader sees, and its markup."""
    return re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)


def test_a_browser_that_fails_is_a_notice_not_a_crash(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setenv("BROWSER_PATH", "/bin/false")  # kaleido's own override: it exits at once
    notice = png.write_pngs({"a": go.Figure(go.Scatter(x=[1, 2], y=[2, 1]))}, tmp_path)
    assert notice.startswith("PNG copies of the plots failed (") and "\n" not in notice
    assert "the page has every plot" in notice and not list(tmp_path.glob("*.png"))


@pytest.mark.slow  # builds a whole report
def test_stage2_name_reports_stage2_and_links_stage1(report, url, tmp_path):
    out = tmp_path / "digits-k3-stage2"
    code, _, stderr = _run_main(["report", "--name", "digits-k3-stage2", "--storage", url,
                                 "--out", str(out), "--grid", str(GRID), "--heldout-samples",
                                 "80", "--no-png", "--device", "cpu"])
    assert code == 0, stderr
    page = (out / "index.html").read_text()
    assert all(f'id="plot-{slug}"' in page for slug in STAGE2_SLUGS)
    assert not any(f'id="plot-{slug}"' in page for slug in STAGE1_SLUGS)
    assert 'href="../digits-k3/index.html"' in page
    # the same result as the stage-1 page: the same grids, the same rows less stage 1's top
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == re.findall(r'<img src="([^"]+)"', report["html"])
    stage1_page = []
    for row in _table_rows(report["html"]):
        roles = [role for role in row[0].split(", ") if not role.startswith("stage 1 #")]
        if roles:
            stage1_page.append([", ".join(roles), *row[1:]])
    assert _table_rows(page) == stage1_page


@pytest.mark.slow  # builds a whole report
def test_an_exported_schedule_joins_the_page(report, url, tmp_path):
    schedule = tmp_path / "schedule.json"
    assert main(["export", "--name", "digits-k3", "--storage", url, "--out", str(schedule)]) == 0
    code, _, stderr = _run_main(["report", "--name", "digits-k3", "--storage", url, "--out",
                                 str(tmp_path / "r"), "--grid", "4", "--heldout-samples", "0",
                                 "--no-png", "--schedule", str(schedule), "--device", "cpu"])
    assert code == 0, stderr
    html = (tmp_path / "r" / "index.html").read_text()
    assert "samples-file.png" in html and "schedule file" in html


def test_heldout_fids_are_stored_one_by_one():
    """A report stopped partway (Ctrl-C, out of memory) keeps the held-out FIDs it finished."""
    from autodiff_optuna.metrics import load_scorer
    from autodiff_optuna.models import load_model
    from autodiff_optuna.reporting import candidates, heldout

    model, scorer = load_model("digits"), load_scorer("digits")
    study = optuna.create_study()
    schedules = [[666, 333, 0], [900, 500, 100]]

    def rows():
        return [candidates.Row(f"row {i}", None, None, timesteps, [[], [], []], None, 0.0)
                for i, timesteps in enumerate(schedules)]

    def ctrl_c_at_the_second(line):
        if line.startswith("held-out FID 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        heldout.fill(rows(), study, model, scorer, lambda row: "ddim", 65, 0,
                     ctrl_c_at_the_second)
    [first] = study.user_attrs[HELDOUT_FID_ATTR]
    assert first["timesteps"] == schedules[0] and np.isfinite(first["fid"])
    lines, again = [], rows()
    heldout.fill(again, study, model, scorer, lambda row: "ddim", 65, 0, lines.append)
    assert [line.split(":")[0] for line in lines] == ["held-out FID 2/2"]  # 1 from the cache
    stored = study.user_attrs[HELDOUT_FID_ATTR]
    assert [c["timesteps"] for c in stored] == schedules and stored[0] == first
    assert [row.heldout_fid for row in again] == [c["fid"] for c in stored]


def test_trials_the_pruner_stopped_are_counted_not_ranked(url, tmp_path):
    """Multi-fidelity pruning: a trial stopped early has a value (its FID on fewer images) but
    no place in the table; the page counts it as evaluated. A surplus trial is neither."""
    from autodiff_optuna.search.fidelity import PRUNED_AT

    copy_url = f"sqlite:///{tmp_path}/copy.db"
    optuna.copy_study(from_study_name="digits-k3", from_storage=url, to_storage=copy_url)
    stage1 = _study(copy_url)
    base = stage1.best_trial
    stopped = [999, 998, 0]  # lower than any FID: it would top the table if it were ranked
    stage1.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, value=1.0, params=base.params,
        distributions=base.distributions, intermediate_values={40: 1.0},
        user_attrs={"timesteps": stopped, PRUNED_AT: 40}))
    stage1.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=base.params,
        distributions=base.distributions, user_attrs={"surplus": "the target was reached"}))
    n = len(stage1.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    out = tmp_path / "r"
    code, _, stderr = _run_main(["report", "--name", "digits-k3", "--storage", copy_url,
                                 "--out", str(out), "--grid", "4", "--heldout-samples", "0",
                                 "--no-png", "--device", "cpu"])
    assert code == 0, stderr
    html = (out / "index.html").read_text()
    assert f"Stage 1: digits-k3 ({n + 1} evaluated: {n} complete, 1 stopped early)" in html
    table = html.split("<table>")[1].split("</table>")[0]
    shown = confirmed_fids(stage1).get(base.number, base.value)  # ranked by the confirmed FID
    assert str(stopped) not in table and f"<td>{shown:.3f}</td>" in table
    assert 'id="plot-stage1-history"' in html


# -- the plots: the result's front, log FID axes, the uniform line, grouped importances ------------

@pytest.fixture(scope="module")
def plotted(url) -> dict:
    """Every panel of both stages, as the page has them, and the result they were made from."""
    result = study_result(_study(url))
    panels = {p.slug: p for study in (result.stage1, result.stage2)
              for p in optuna_plots.panels(study, result)}
    return {"result": result, "panels": panels}


def _log_fid_axis_with_uniform_line(figure, uniform) -> None:
    assert figure.layout.yaxis.type == "log" and "log scale" in figure.layout.yaxis.title.text
    [line] = [s for s in figure.layout.shapes if s.y0 == s.y1]
    assert line.y0 == pytest.approx(uniform.fid) and line.line.dash == "dash"
    [label] = [a for a in figure.layout.annotations if a.text.startswith("uniform")]
    assert label.text == f"uniform (stage 1 trial {uniform.trial}): FID {uniform.fid:.3f}"
    assert label.y == pytest.approx(math.log10(uniform.fid))  # plotly: log10 on a log axis


def test_the_pareto_plot_is_the_result_s_thinned_front_of_both_stages(plotted):
    result, figure = plotted["result"], plotted["panels"]["stage2-pareto"].figure
    traces = {t.name: t for t in figure.data}
    front = traces["Pareto front (thinned)"]
    assert list(zip(front.x, front.y)) == [(p.gflops, p.fid) for p in result.front]
    # every complete trial of both stages, faint, its hover naming stage and trial
    for stage, study in ((1, result.stage1), (2, result.stage2)):
        trials = traces[f"stage {stage} trials"]
        # stage 2's carried stage-1 elites are stage 1's points, drawn once, as stage 1's
        numbers = [t.number for t in study.get_trials(states=(COMPLETE,)) if not is_carried(t)]
        assert [t.split("<br>")[0] for t in trials.text] == [
            f"stage {stage} trial {n}" for n in numbers]
        assert trials.marker.opacity < 0.5
    marks: dict[tuple[int, int], list[str]] = {}  # the best and the exported, one a trial
    for role, point in (("best", result.best), ("exported", result.choose())):
        marks.setdefault((point.stage, point.trial), []).append(role)
    assert [n for n in traces if not n.startswith(("stage ", "Pareto"))] == [
        f"{' = '.join(roles)}: stage {stage} trial {trial}"
        for (stage, trial), roles in marks.items()]
    _log_fid_axis_with_uniform_line(figure, result.uniform)


def test_history_plots_have_a_log_fid_axis_and_the_uniform_line(plotted):
    for slug in ("stage1-history", "stage2-history"):
        _log_fid_axis_with_uniform_line(plotted["panels"][slug].figure, plotted["result"].uniform)


def test_stage2_importances_are_summed_by_layer_and_by_step(plotted):
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    result = plotted["result"]
    by_layer, by_step = plotted["panels"]["stage2-importances"].figure.data
    layers = result.stage2.user_attrs["layers"]
    searched = any(name[0] in "oc" for name in result.stage2.best_trials[0].params)
    assert list(by_layer.y) == ["time steps", *map(plain, layers),
                                *(["solver"] if searched else [])]  # one bar a layer
    assert list(by_step.y) == ["step 1", "step 2", "step 3"]
    single = get_param_importances(result.stage2, evaluator=FanovaImportanceEvaluator(seed=0),
                                   target=lambda t: t.values[0])
    assert by_layer.x[0] == pytest.approx(sum(single.get(f"t{k}", 0) for k in range(3)))
    for layer, value in zip(layers, by_layer.x[1:]):
        assert value == pytest.approx(sum(single.get(f"m{k}:{layer}", 0) for k in range(3)))
    assert sum(by_layer.x) == pytest.approx(1) and sum(by_step.x) == pytest.approx(1)


def test_the_masks_walk_the_thinned_front_from_the_exported_point(plotted):
    result, figure = plotted["result"], plotted["panels"]["stage2-masks"].figure
    [slider] = figure.layout.sliders
    assert [s.label for s in slider.steps] == [f"{p.gflops:.4f}" for p in result.front]
    keys = [(p.stage, p.trial) for p in result.front]
    exported = result.choose()
    shown = (keys.index((exported.stage, exported.trial)) if exported.stage == 2
             else next(i for i, p in enumerate(result.front) if p.stage == 2))
    assert slider.active == shown
    point = result.front[shown]
    assert figure.layout.title.text.startswith(
        f"Skipped layers of stage {point.stage} trial {point.trial}: FID {point.fid:.3f}")


@pytest.mark.slow  # 1.7 s on the idle machine: out of the fast subset
def test_a_budget_is_the_exported_point_s_and_one_nothing_fits_is_refused(url, tmp_path):
    """``Options.export_rule``'s budget picks the exported point as ``export --max-gflops``
    does: the whole network's budget is the best point; one nothing fits is one line, nothing
    written."""
    storage = open_storage(url, writable=True)
    with pytest.raises(UsageError, match="no candidate of 'digits-k3' costs <= 0.0001 GFLOPs"):
        build("digits-k3", storage, Options(out=tmp_path / "none",
                                            export_rule=ExportRule(max_gflops=0.0001)))
    assert not (tmp_path / "none").exists()
    result = study_result(_study(url))
    out = tmp_path / "r"
    budget = ExportRule(max_gflops=result.full_gflops)
    build("digits-k3", storage, Options(out=out, export_rule=budget, grid=4, heldout_samples=0,
                                        png=False))
    best = result.best
    roles = ["best", "exported"] if (best.stage, best.trial) != (1, result.uniform.trial) else [
        "uniform", "best", "exported"]
    assert f"samples-{'-'.join(roles)}.png" in (out / "index.html").read_text()
    assert f"within {result.full_gflops} GFLOPs/image" in (out / "index.html").read_text()


# -- bad input -----------------------------------------------------------------------------------

def test_bad_input_is_one_line_and_exit_2(url, tmp_path, capsys):
    base = ["report", "--storage", url, "--out", str(tmp_path / "r"), "--no-png"]
    assert main(base + ["--name", "nope"]) == 2
    assert "no study named 'nope'" in (err := error_line(capsys))
    assert "studies there: digits-k3, digits-k3-stage2" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(base + ["--name", "digits-k3", "--schedule", str(broken)]) == 2
    assert "not valid JSON" in error_line(capsys)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"format": "something else"}))
    assert main(base + ["--name", "digits-k3", "--schedule", str(foreign)]) == 2
    assert "not an autodiff-optuna schedule" in error_line(capsys)
    assert main(base + ["--name", "digits-k3", "--top", "0"]) == 2
    assert "--top must be at least 1" in error_line(capsys)
    assert main(base + ["--name", "digits-k3", "--heldout-samples", "10"]) == 2
    assert "--heldout-samples must exceed the FID feature dimension" in error_line(capsys)
    assert not (tmp_path / "r").exists()  # nothing written for bad input


@pytest.mark.parametrize("in_the_way", ["index.html", "samples-uniform.png"])
def test_a_folder_where_the_page_writes_a_file(in_the_way, url, tmp_path, capsys):
    """Refused before anything is written (it was IsADirectoryError, after the grids)."""
    out = tmp_path / "r"
    (out / in_the_way).mkdir(parents=True)
    assert main(["report", "--name", "digits-k3", "--storage", url, "--out", str(out),
                 "--no-png", "--heldout-samples", "0", "--grid", "2"]) == 2
    assert f"{out / in_the_way} is a folder where the report writes a file" in \
        error_line(capsys)
    assert [p.name for p in out.iterdir()] == [in_the_way]


def test_empty_study_is_one_line_and_exit_2(url, tmp_path, capsys):
    empty_url = f"sqlite:///{tmp_path}/empty.db"
    empty = optuna.create_study(study_name="digits-k3", storage=empty_url)
    empty.set_user_attr("config", _study(url).user_attrs["config"])
    empty.enqueue_trial({"t0": 666, "t1": 333, "t2": 0})  # queued, never run
    assert main(["report", "--name", "digits-k3", "--storage", empty_url, "--no-png"]) == 2
    assert "has no complete trial yet" in error_line(capsys)
    assert main(["report", "--name", "digits-k3", "--storage", f"sqlite:///{tmp_path}/new.db",
                 "--no-png"]) == 2
    assert "no database at" in error_line(capsys)  # and none is made
    assert not (tmp_path / "new.db").exists()
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/other.db")
    assert main(["report", "--name", "digits-k3", "--storage", f"sqlite:///{tmp_path}/other.db",
                 "--no-png"]) == 2
    err = error_line(capsys)
    assert "no study named 'digits-k3'" in err and "studies there: other" in err


@pytest.mark.slow  # 3.2 s on the idle machine: out of the fast subset
def test_a_stage2_not_run_yet_is_a_note_on_the_stage1_page(url, tmp_path, capsys):
    from autodiff_optuna import search
    from autodiff_optuna.search.config import SearchConfig

    copy_url = f"sqlite:///{tmp_path}/copy.db"
    optuna.copy_study(from_study_name="digits-k3", from_storage=url, to_storage=copy_url)
    stage1 = _study(copy_url)
    config = SearchConfig("digits", 3, samples=80, population=4)
    search.open_stage2(search.SearchContext.build(config), stage1, copy_url, None)  # queued only
    base = ["report", "--storage", copy_url, "--grid", "4", "--heldout-samples", "0", "--no-png"]
    assert main(base + ["--name", "digits-k3", "--out", str(tmp_path / "r")]) == 0
    html = (tmp_path / "r" / "index.html").read_text()
    # stage 1's elites are carried into it with their scores: no trial of its own has run
    assert "Stage 2: digits-k3-stage2 (0 complete, " in html and "carried from stage 1" in html
    capsys.readouterr()
    assert main(base + ["--name", "digits-k3-stage2"]) == 2
    assert "'digits-k3-stage2' has no complete trial yet" in error_line(capsys)


def test_importances_of_a_degenerate_study_are_a_note():
    study = optuna.create_study()
    study.set_user_attr("config", {"steps": 2})
    study.optimize(lambda t: 0.0 * t.suggest_int("t0", 0, 9) + 0.0 * t.suggest_int("t1", 0, 9)
                   + 1.0, n_trials=4)  # every FID equal: fANOVA has no variance to split
    panel = {p.slug: p for p in optuna_plots.panels(study)}["stage1-importances"]
    assert panel.figure is None and "could not be computed" in panel.note
    assert len(panel.note.splitlines()) == 1


def test_artifacts_dir_rule():
    assert artifacts_dir("sqlite:////data/runs/s.db") == Path("/data/runs/artifacts")
    assert artifacts_dir(None) == Path("studies/artifacts")  # beside studies/autodiff.db
    assert artifacts_dir("postgresql+psycopg://u@h/db") == Path("studies/artifacts")
    assert artifacts_dir("postgresql+psycopg://u@h/db", "/srv/art") == Path("/srv/art")


# -- headless Chromium ---------------------------------------------------------------------------

def _open_in_chromium(page: Path, tmp_path: Path, height: int = 9000) -> dict:
    """Load ``page`` from file:// in headless Chromium: a screenshot, the console messages and
    uncaught errors it logged, and the DOM after its scripts ran."""
    common = [CHROMIUM, "--headless=new", "--no-sandbox", "--hide-scrollbars",
              "--no-first-run", "--virtual-time-budget=15000",
              f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    shot = tmp_path / "screenshot.png"
    run = subprocess.run(common + ["--enable-logging=stderr", "--v=0",
                                   f"--window-size=1280,{height}", f"--screenshot={shot}",
                                   page.as_uri()], capture_output=True, text=True, timeout=CEILING,
                         check=False)
    assert shot.is_file(), run.stderr[-2000:]
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=CEILING, check=True).stdout
    # Chromium logs every console message and uncaught exception of the page as CONSOLE
    console = [line for line in run.stderr.splitlines() if re.search(r"\bCONSOLE[:(]", line)]
    return {"screenshot": Image.open(shot).convert("RGB"), "console": console, "dom": dom}


def _coloured_fraction(image: Image.Image) -> float:
    """Share of strongly coloured pixels: plot marks, not text, grid lines or background."""
    hsv = np.asarray(image.convert("HSV"))
    return float(((hsv[..., 1] > 100) & (hsv[..., 2] > 60)).mean())


def _rendered_plots(dom: str) -> set[str]:
    """Plot divs that Plotly drew into (it adds js-plotly-plot and an SVG)."""
    return set(re.findall(r'id="plot-([\w-]+)" class="[^"]*js-plotly-plot[^"]*"[^>]*>'
                          r'.{0,600}?class="main-svg"', dom))


@pytest.mark.slow  # 1.2 s on the idle machine: out of the fast subset
@needs_chromium
def test_the_checks_catch_a_broken_page(tmp_path):
    """The harness itself: an error and a blank page must fail its checks."""
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><div id="plot-x" class="plotly-graph-div"></div><script>'
                      'console.error("boom"); undefined_function();</script></body></html>')
    seen = _open_in_chromium(broken, tmp_path, height=600)
    assert any("boom" in line for line in seen["console"])
    assert any("undefined_function" in line for line in seen["console"])
    assert _coloured_fraction(seen["screenshot"]) < 0.001 and not _rendered_plots(seen["dom"])


@pytest.mark.slow  # a browser
@needs_chromium
def test_page_renders_in_headless_chromium(report, tmp_path):
    seen = _open_in_chromium(report["out"] / "index.html", tmp_path)
    assert seen["console"] == []
    assert {"schedules", *STAGE1_SLUGS, *STAGE2_SLUGS} <= _rendered_plots(seen["dom"])
    image = seen["screenshot"]
    assert _coloured_fraction(image) > 0.005, "the plots drew (almost) nothing"
    assert len(image.getcolors(1 << 24)) > 500


# -- the notebook --------------------------------------------------------------------------------

@pytest.mark.slow  # a notebook kernel
def test_notebook_runs_against_a_study(url, tmp_path, monkeypatch):
    """Run as Jupyter runs it, it prints the result as ``study_result`` has it and draws every
    plot; nbconvert's HTML of it draws them too (it keeps HTML, not plotly's own data type),
    with plotly.js inlined once."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel's temporary files go here

    path = ROOT / "notebooks" / "inspect_study.ipynb"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed clean
    assert "parameters" in code[0].metadata.get("tags", [])
    code[0].source = f"STUDY = 'digits-k3'\nSTORAGE = {url!r}"
    NotebookClient(nb, timeout=CEILING, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    result = study_result(_study(url))
    full = result.full_gflops
    for line in (f"best: {result.best.describe(full)}", result.choose().describe(full),
                 f"uniform baseline (same step count, full network): "
                 f"{result.uniform.describe(full)}"):
        assert line in text
    assert [line for line in text.splitlines() if line.startswith("  front: ")] == [
        f"  front: {p.describe(full)}" for p in result.front]
    assert not [o for c in code for o in c.outputs if o.get("name") == "stderr"]
    shown = "".join(o.get("data", {}).get("text/html", "") for c in code for o in c.outputs)
    # a heading per stage (their plots have the same titles), and the last grid's caption
    assert "<h3>Stage 1: digits-k3</h3>" in shown and "<h3>Stage 2: digits-k3-stage2</h3>" in shown
    assert html.escape("36 samples of the exported schedule on held-out noise (seed 0): "
                       f"{result.choose().describe(full)}") in shown
    plotted = [o for c in code for o in c.outputs if "application/vnd.plotly.v1+json" in
               o.get("data", {})]
    assert len(plotted) >= 11 and all("text/html" in o["data"] for o in plotted)
    assert "image/png" in [k for c in code for o in c.outputs for k in o.get("data", {})]
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []  # it leaves nothing behind

    page, _ = HTMLExporter().from_notebook_node(nb)
    assert page.count('class="plotly-graph-div"') == len(plotted)
    assert page.count("Plotly.newPlot(") == len(plotted)
    assert page.count(get_plotlyjs()[:500]) == 1
