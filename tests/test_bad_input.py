"""Bad input, one class at a time (issue 16): every refusal is ONE line on stderr and exit code 2,
never a traceback, and nothing a study database already holds is changed by a refused command."""

import html
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import CEILING, error_line

from autodiff_optuna.cli import main
from autodiff_optuna.export import SearchedSchedule
from autodiff_optuna.reporting import plots
from autodiff_optuna.search.results import confirmed_fids
from autodiff_optuna.storage import record

NAME = "digits-k2"



def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    return error_line(capsys)


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    """A two-step digits study of two stage-1 trials (a few seconds), copied per test."""
    path = tmp_path_factory.mktemp("study") / "s.db"
    assert main(["study", "--model", "digits", "--steps", "2", "--trials", "2", "--samples", "80",
                 "--population", "2", "--stage", "1", "--storage", f"sqlite:///{path}",
                 "--quiet"]) == 0
    return path


@pytest.fixture
def url(study_db, tmp_path) -> str:
    """This test's own copy of the study."""
    return _copy_db(study_db, tmp_path / "s.db")


def _copy_db(source: Path, copy: Path) -> str:
    """Through SQLite's backup, so that what is still in the WAL file is copied too."""
    with sqlite3.connect(source) as origin, sqlite3.connect(copy) as target:
        origin.backup(target)
    return f"sqlite:///{copy}"


def _dump(url: str) -> list[str]:
    """Every row of the database, as SQL: what 'nothing was changed' compares."""
    connection = sqlite3.connect(url[len("sqlite:///"):])
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def _copy_as(url: str, name: str) -> optuna.Study:
    optuna.copy_study(from_study_name=NAME, from_storage=url, to_storage=url,
                      to_study_name=name)
    return optuna.load_study(study_name=name, storage=url)


def _schedule_file(url, tmp_path, capsys) -> dict:
    out = tmp_path / "schedule.json"
    assert main(["export", "--name", NAME, "--storage", url, "--out", str(out)]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


# -- 3: what a study stores is shown, never run --------------------------------------------------

MARKUP_NAME = ("<script>console.error('INJECTED-name')</script>"
               "<img src=x onerror=\"console.error('INJECTED-name-img')\">")
MARKUP_STEPS = ("<img src=x onerror=console.error('INJECTED-steps')>"
                "<script>console.error('INJECTED-steps-script')</script>")


@pytest.fixture(scope="module")
def markup_report(study_db, tmp_path_factory) -> Path:
    """The report of a study whose name, and one of whose trials' stored time steps, are HTML
    and script (written straight into the database, as anyone with access to it could)."""
    tmp_path = tmp_path_factory.mktemp("markup")
    url = _copy_db(study_db, tmp_path / "s.db")
    study = _copy_as(url, MARKUP_NAME)
    best = study.best_trial
    study.add_trial(optuna.trial.create_trial(  # ranked second: a row of the table
        value=best.value + 1e-3, params=best.params, distributions=best.distributions,
        user_attrs={"timesteps": MARKUP_STEPS}))
    confirmed = confirmed_fids(study)  # results rank by the confirmed FID where there is one
    if confirmed:
        study.set_user_attr(f"{record.CONFIRMED_ATTR}:{len(study.trials) - 1}",
                            min(confirmed.values()) + 1e-3)
    out = tmp_path / "report"
    assert main(["report", "--name", MARKUP_NAME, "--storage", url, "--out", str(out),
                 "--grid", "4", "--heldout-samples", "65", "--top", "5", "--no-png",
                 "--device", "cpu"]) == 0
    return out / "index.html"


def test_stored_markup_is_escaped_in_the_page(markup_report):
    page = markup_report.read_text()
    for markup in (MARKUP_NAME, MARKUP_STEPS):
        assert markup not in page
    assert html.escape(f"Study {MARKUP_NAME}") in page  # title and heading
    assert f"<td class='text'>{html.escape(MARKUP_STEPS)}</td>" in page  # the table's row
    assert "<img src=x" not in page and "INJECTED" in page
    # nor in the plots' hover texts (Optuna puts user attributes there; plotly renders markup)
    assert "\\u003cimg" not in page and "\\u003cscript" not in page
    assert "&lt;img src=x onerror=console.error('INJECTED-steps')&gt;" in page
    # the page's own scripts only: plotly.js and one per figure (whose JSON escapes '<')
    assert page.count("<script") == 1 + page.count('class="plotly-graph-div"')


@pytest.mark.slow  # two headless Chromium runs
def test_stored_markup_does_not_run_in_a_browser(markup_report, tmp_path):
    from test_report import CHROMIUM, _open_in_chromium

    if CHROMIUM is None:
        pytest.skip("no chromium binary (CI installs Debian's: apt-get install chromium)")
    # the check itself: the same markup written raw into a page does run
    raw = tmp_path / "raw.html"
    raw.write_text(f"<html><body><h1>{MARKUP_NAME}</h1><p>{MARKUP_STEPS}</p></body></html>")
    (tmp_path / "raw").mkdir()
    seen = _open_in_chromium(raw, tmp_path / "raw", height=600)
    assert any("INJECTED-name" in line for line in seen["console"]), seen["console"]
    (tmp_path / "page").mkdir()
    seen = _open_in_chromium(markup_report, tmp_path / "page")
    assert not [line for line in seen["console"] if "INJECTED" in line], seen["console"]
    assert html.escape(MARKUP_STEPS, quote=False) in seen["dom"]  # shown as text


def test_a_stored_schedule_the_page_must_sample_is_refused(url, tmp_path, capsys):
    """Shown in the table, a stored value is escaped; sampled for a grid (the best trial), it
    must be a schedule: one line, before anything is written."""
    study = optuna.load_study(study_name=NAME, storage=url)
    best = study.best_trial
    study.add_trial(optuna.trial.create_trial(
        value=best.value - 1, params=best.params, distributions=best.distributions,
        user_attrs={"timesteps": [999, "<b>499</b>"]}))
    number = study.trials[-1].number
    before = _dump(url)
    err = _refused(capsys, ["report", "--name", NAME, "--storage", url, "--no-png",
                            "--out", str(tmp_path / "r")])
    assert f"stage 1 best (study 'digits-k2', trial {number}): the stored schedule is " \
           "malformed: time steps must be integers" in err
    assert not (tmp_path / "r").exists() and _dump(url) == before


def test_stored_layer_names_are_text_in_the_mask_plot():
    markup = "<a href='javascript:alert(1)'>x</a>"
    figure = plots.mask_figure([{"timesteps": [500, 0], "skip": [[markup], []], "fid": 1.0,
                                 "gflops": 0.1, "trial": 0}], [markup, "mid"], 0)
    heatmap = figure.data[0]
    assert list(heatmap.x) == ["&lt;a href='javascript:alert(1)'&gt;x&lt;/a&gt;", "mid"]
    assert list(heatmap.z[0]) == [1, 0] and "<a " not in json.dumps(figure.to_plotly_json())


# -- 7: wrong values of flags --------------------------------------------------------------------

@pytest.mark.parametrize("device, message", [
    ("foo", "is not a device"),
    ("meta", "only cpu and cuda"),
    ("cuda:99", "cuda"),  # no such GPU here, whether or not there are others
])
def test_a_device_that_cannot_run_the_model(device, message, capsys, tmp_path):
    storage = f"sqlite:///{tmp_path}/new.db"
    for argv in (["evaluate", "--model", "digits", "--timesteps", "9,3", "--samples", "80"],
                 ["study", "--model", "digits", "--steps", "2", "--storage", storage],
                 ["sample", "--schedule", str(tmp_path / "none.json")]):
        assert message in _refused(capsys, argv + ["--device", device])
    assert not (tmp_path / "new.db").exists()


def test_a_folder_as_the_grid_file_is_refused_before_sampling(tmp_path, capsys):
    message = _refused(capsys, ["sample", "--schedule", str(tmp_path / "none.json"), "--out",
                                str(tmp_path)])
    assert message.endswith(f"{tmp_path}: it is a directory; give a file, e.g. "
                            f"{tmp_path / 'samples.png'}")


@pytest.mark.parametrize("steps", ["999,,0", ",999,0", "999,0,", "999;500", ""])
def test_a_malformed_step_list_is_refused_not_shortened(steps, capsys):
    """An empty item is a typo: "999,,0" is not the 2-step schedule [999, 0]."""
    assert "expected comma-separated integers" in _refused(
        capsys, ["evaluate", "--model", "digits", "--timesteps", steps, "--samples", "80"])


def test_counts_beyond_their_bounds_are_refused_before_anything_is_made(url, tmp_path, capsys):
    huge = str(10**12)
    new = tmp_path / "new.db"
    before = _dump(url)
    for argv, message in [
        (["study", "--model", "digits", "--steps", "2", "--samples", huge,
          "--storage", f"sqlite:///{new}"], "--samples must be at most 1,000,000 images"),
        (["study", "--model", "digits", "--steps", "2", "--samples", "80", "--heartbeat", huge,
          "--storage", f"sqlite:///{new}"], "--heartbeat must be from 1 to 86400"),
        (["evaluate", "--model", "digits", "--timesteps", "9,3", "--samples", huge],
         "--samples must be at most"),
        (["sample", "--schedule", str(tmp_path / "none.json"), "--n", huge],
         "--n must be at most 10,000 images"),
        (["report", "--name", NAME, "--storage", url, "--grid", huge], "--grid must be at most"),
        (["report", "--name", NAME, "--storage", url, "--heldout-samples", huge],
         "--heldout-samples must be at most"),
        (["evaluate", "--model", "digits", "--timesteps", "9,3", "--seed", huge * 2],
         "--seed must be in [0, 4611686018427387903]"),
        (["sample", "--schedule", str(tmp_path / "none.json"), "--seed", "-1"], "--seed must be"),
        (["report", "--name", NAME, "--storage", url, "--seed", huge * 2], "--seed must be"),
        (["evaluate", "--model", "adm64", "--timesteps", "9,3", "--classifier-scale", "nan"],
         "--classifier-scale must be a number >= 0, got nan"),
        (["dashboard", "--storage", url, "--port", "70000"], "--port must be in [1, 65535]"),
        (["dashboard", "--storage", url, "--port", "0"], "--port must be in [1, 65535]"),
    ]:
        assert message in _refused(capsys, argv), argv
    assert not new.exists() and not Path("reports", NAME).exists()
    assert _dump(url) == before


def test_a_count_this_machine_cannot_hold_names_its_limit(tmp_path, capsys):
    """Within the bound, but not in memory: 10,000 images of 4096x4096 (the digits network,
    whose weights do not depend on the image size, configured for that size)."""
    from autodiff_optuna.models.registry import DIGITS_DIR
    from autodiff_optuna.sampling.noise import physical_memory

    if physical_memory() is None:
        pytest.skip("this system does not say how much memory it has")
    checkpoint = _flat_checkpoint(tmp_path, DIGITS_DIR)
    config = json.loads((DIGITS_DIR / "unet" / "config.json").read_text())
    (checkpoint / "config.json").unlink()
    (checkpoint / "config.json").write_text(json.dumps({**config, "sample_size": 4096}))
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"format": "autodiff-optuna-schedule/1",
                                    "model": "ddpm-cifar10", "solver": "ddim",
                                    "timesteps": [999, 499], "skip": [[], []]}))
    err = _refused(capsys, ["sample", "--schedule", str(schedule), "--n", "10000",
                            "--checkpoint", str(checkpoint), "--out", str(tmp_path / "g.png")])
    assert "--n 10,000: 10,000 images of ddpm-cifar10 (1x4096x4096) need about" in err
    assert "GiB of memory" in err and err.endswith(" here")
    assert not (tmp_path / "g.png").exists()


def _flat_checkpoint(tmp_path, bundled: Path) -> Path:
    """A bundled model as a flat diffusers model repository (google/ddpm-*'s layout)."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for file in (bundled / "unet").iterdir():
        (checkpoint / file.name).symlink_to(file)
    (checkpoint / "scheduler_config.json").symlink_to(
        bundled / "scheduler" / "scheduler_config.json")
    return checkpoint


# -- 7 and 8: input files ------------------------------------------------------------------------

def _skip_file(tmp_path, name, content: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


NOT_NAMES = "one list of layer names per step (each name a string)"


@pytest.mark.parametrize("content, message", [
    ('{"skip": [[["mid_block.attentions.0"]], []]}', NOT_NAMES),
    ('{"skip": [[{"a": 1}], []]}', NOT_NAMES),
    ('{"skip": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (b'{"skip": [["\xe9"], []]}', "not UTF-8 text (byte 12"),
    ('{"skip": [[], []], "x": ' + "1" * 5000 + "}", "not valid JSON"),
    ("[]", "must hold a JSON object"),
])
def test_a_malformed_skip_file(content, message, tmp_path, capsys):
    path = _skip_file(tmp_path, "skip.json", content)
    assert message in _refused(capsys, ["evaluate", "--model", "digits", "--timesteps", "9,3",
                                        "--samples", "80", "--skip", path])


@pytest.mark.parametrize("path, message", [
    ("/dev/zero", "larger than 4 MiB"),  # would otherwise be read until memory runs out
    ("/", "/ is a directory, not a file"),
    ("/no/such/file.json", "cannot read /no/such/file.json: No such file or directory"),
])
def test_an_input_that_is_no_file_to_read(path, message, capsys):
    for argv in (["evaluate", "--model", "digits", "--timesteps", "9,3", "--skip", path],
                 ["sample", "--schedule", path, "--n", "4"]):
        assert message in _refused(capsys, argv)


@pytest.mark.parametrize("change, message", [
    ({"fid": "1.5"}, "'fid' must be a number"),
    ({"gflops": "0.1"}, "'gflops' must be a number"),
    ({"provenance": {"model_weights": 5}}, "provenance 'model_weights' must be a string"),
    ({"provenance": {"trial": "3"}}, "provenance 'trial' must be an integer"),
    ({"provenance": {"study": ["x"]}}, "provenance 'study' must be a string"),
    ({"timesteps": ["999", "499"]}, "a list of integers"),
    ({"skip": [[["a"]], []]}, "'skip' must be a list of lists of layer names"),
    ({"diffusers": {"timesteps": [1, 2, 3]}}, "'diffusers' 'timesteps' [1, 2, 3] differ from"),
])
def test_a_schedule_file_with_fields_of_the_wrong_type(change, message, url, tmp_path, capsys):
    schedule = _schedule_file(url, tmp_path, capsys)
    for block in ("provenance", "diffusers"):  # one field of the block changed, the rest kept
        if block in change:
            change = {block: {**schedule[block], **change[block]}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**schedule, **change}))
    before = _dump(url)
    assert message in _refused(capsys, ["sample", "--schedule", str(path), "--n", "4",
                                        "--out", str(tmp_path / "g.png")])
    assert message in _refused(capsys, ["report", "--name", NAME, "--storage", url,
                                        "--schedule", str(path), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "r").exists()
    assert _dump(url) == before


@pytest.mark.parametrize("config, message", [
    (b"not json", "is not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
    (b'{"num_train_timesteps": 1}', "num_train_timesteps must be an integer of at least 2"),
    (b'{"num_train_timesteps": "many"}', "is not a diffusers scheduler config"),
    (b'{"num_train_timesteps": 1000, "beta_schedule": "nope"}',
     "is not a diffusers scheduler config"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_a_checkpoint_whose_scheduler_config_is_not_one(config, message, tmp_path, capsys):
    from autodiff_optuna.models.registry import DIGITS_DIR

    checkpoint = _flat_checkpoint(tmp_path, DIGITS_DIR)
    (checkpoint / "scheduler_config.json").unlink()
    (checkpoint / "scheduler_config.json").write_bytes(config)
    assert message in _refused(capsys, ["evaluate", "--model", "ddpm-cifar10", "--timesteps",
                                        "9,3", "--checkpoint", str(checkpoint)])


# -- 7 and 9: where output goes ------------------------------------------------------------------

def test_an_output_folder_that_cannot_take_files(url, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("")
    before = _dump(url)
    report = ["report", "--name", NAME, "--storage", url, "--no-png", "--heldout-samples", "0"]
    assert f"--out {file} is a file, not a folder" in _refused(capsys, report + ["--out",
                                                                                 str(file)])
    assert "Not a directory" in _refused(capsys, report + ["--out", str(file / "sub")])
    assert f"--artifacts {file} is a file" in _refused(
        capsys, report + ["--out", str(tmp_path / "r"), "--artifacts", str(file)])
    assert f"{file} is a file: downloads need a directory" in _refused(
        capsys, ["download", "ddpm-cifar10", "--dir", str(file)])
    assert _dump(url) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder(url, tmp_path, capsys):
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    before = _dump(url)
    assert "Permission denied" in _refused(capsys, [
        "report", "--name", NAME, "--storage", url, "--no-png", "--out", str(read_only)])
    assert _dump(url) == before


@pytest.mark.parametrize("name", ["..", "../../outside", "/tmp/elsewhere", "a\\b", "two\nlines"])
def test_a_study_name_cannot_put_the_report_outside_reports(name, url, tmp_path, capsys,
                                                            monkeypatch):
    _copy_as(url, name)
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = _dump(url)
    err = _refused(capsys, ["report", "--name", name, "--storage", url, "--no-png"])
    assert "cannot be a folder under reports/" in err and "--out DIR" in err
    written = [p for p in tmp_path.rglob("*") if not p.name.startswith("s.db")]  # the database's
    assert written == [tmp_path / "work", work] and not Path("/tmp/elsewhere").exists()
    assert _dump(url) == before


# -- 10: the error line itself, and Ctrl-C -------------------------------------------------------

def test_an_error_naming_a_study_with_a_line_break_is_one_line(url, capsys):
    _copy_as(url, "two\nlines\u2028and more")
    err = _refused(capsys, ["best", "--name", "missing", "--storage", url])
    assert "two\\nlines\\u2028and more" in err


def _wait_for_a_running_trial(worker, path: Path) -> None:
    """Until the worker has completed a trial and runs another (read from the file read-only:
    opening it through Optuna would create tables while the worker creates them)."""
    query = ("SELECT state, EXISTS (SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id) "
             "FROM trials t")
    while worker.poll() is None:  # a worker that ends first fails the test, never hangs it
        states = set()
        if path.exists():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                    states = set(connection.execute(query))
            except sqlite3.OperationalError:  # no tables yet, or locked for a moment
                pass
        if ("COMPLETE", 0) in states or ("COMPLETE", 1) in states:
            if ("RUNNING", 1) in states:
                return
        time.sleep(0.05)
    raise AssertionError(f"the worker ended (rc {worker.returncode}) before a trial ran")


@pytest.mark.slow  # a worker process
def test_a_second_ctrl_c_is_quiet(spawn, tmp_path):
    """A second Ctrl-C once the first has been handled (the first's cleanup has begun): the
    process ends at once, without a traceback. The second is sent only after the worker has
    said it was interrupted, so the two can never arrive as one (which would test a single
    Ctrl-C: tests/test_resilience.py); it lands in the rest of the cleanup or after the exit,
    and both are quiet."""
    path = tmp_path / "int.db"
    worker = spawn(["study", "--model", "digits", "--steps", "3", "--stage", "1", "--trials",
                    "50", "--samples", "200", "--population", "4", "--heartbeat", "1",
                    "--storage", f"sqlite:///{path}", "--quiet"])
    _wait_for_a_running_trial(worker, path)
    worker.send_signal(signal.SIGINT)
    while worker.poll() is None and "interrupted" not in worker.err_path.read_text():
        time.sleep(0.05)  # waits on the worker's own word that the first was handled
    worker.send_signal(signal.SIGINT)  # a no-op once the worker has exited
    code = worker.wait()
    lines = [line for line in worker.err_path.read_text().splitlines() if line.strip()]
    assert code in (130, -signal.SIGINT)  # -SIGINT: the second came while Python was exiting
    assert lines and all(line.startswith("interrupted") for line in lines), lines


@pytest.mark.slow  # a process of its own
def test_output_into_a_closed_pipe_exits_quietly(study_db):
    """`best --json | head -1`: the reader is gone before the output is written."""
    worker = subprocess.Popen([sys.executable, "-m", "autodiff_optuna", "best", "--name", NAME,
                               "--storage", f"sqlite:///{study_db}", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker.stdout.close()
    stderr = worker.stderr.read()
    assert worker.wait() == 1 and stderr == ""  # Python's own exit code for EPIPE, no traceback


# -- threads -------------------------------------------------------------------------------------

@pytest.mark.slow  # a process of its own
def test_torch_threads_follow_the_cores_the_process_may_use():
    """N workers on one machine must not each start a thread per core of the machine."""
    script = """
import os, torch
from autodiff_optuna.cli import main
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # as `taskset -c N` does
os.environ.pop("OMP_NUM_THREADS", None)
main(["best", "--name", "x", "--storage", "sqlite:////no/such/dir/a.db"])
print(torch.get_num_threads())
os.environ["OMP_NUM_THREADS"] = "3"
main(["best", "--name", "x", "--storage", "sqlite:////no/such/dir/a.db"])
print(torch.get_num_threads())
"""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=CEILING, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "3"]


# -- issue 25: names, reference files and model configs refused up front; quiet loads ----------

@pytest.mark.parametrize("name, message", [
    ("x" * 10_000, "is 10000 bytes long, a file name at most 248"),
    ("é" * 125, "is 250 bytes long"),  # bytes, not characters
    ("team/run-1", "path separator"),
    ("..", "'.' or '..'"),
])
def test_a_study_name_no_report_folder_can_have_is_refused_up_front(name, message, tmp_path,
                                                                    capsys):
    new = tmp_path / "new.db"
    err = _refused(capsys, ["study", "--model", "digits", "--steps", "2", "--name", name,
                            "--storage", f"sqlite:///{new}"])
    assert message in err and "cannot be used" in err and len(err) < 300
    assert not new.exists()


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_an_empty_or_blank_study_name_is_refused(name, tmp_path, capsys):
    """An unset shell variable, or one quoted with blanks, must not mean the default study or
    make one no listing tells apart from it."""
    new = tmp_path / "new.db"
    err = _refused(capsys, ["study", "--model", "digits", "--steps", "2", "--name", name,
                            "--storage", f"sqlite:///{new}"])
    assert "--name" in err and "empty or blank" in err
    assert not new.exists()


def test_a_stored_name_too_long_for_a_folder_is_reported_with_out(url, tmp_path, capsys,
                                                                  monkeypatch):
    from autodiff_optuna.search.config import MAX_NAME_BYTES, name_problem

    assert name_problem("a" * MAX_NAME_BYTES) is None and name_problem("a" * 249) is not None
    long_name = "y" * 300
    _copy_as(url, long_name)
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, ["report", "--name", long_name, "--storage", url, "--no-png"])
    assert "is 300 bytes long" in err and "pass --out DIR" in err and len(err) < 300
    assert not (tmp_path / "reports").exists()


@pytest.fixture
def real_fid_flags(tmp_path) -> list[str]:
    """A stand-in Inception (16 features) and statistics of its dimension: what a real model's
    FID needs, for `evaluate --model diffusers`."""
    import numpy as np
    from realmodel_standins import save_standin_inception, save_stats

    inception = save_standin_inception(tmp_path / "inception.pt", dim=16)
    stats = save_stats(tmp_path / "stats.npz", np.random.default_rng(0).normal(size=(40, 16)))
    return ["--inception", str(inception), "--ref-stats", str(stats)]


def _evaluate_diffusers(checkpoint, flags) -> list[str]:
    return ["evaluate", "--model", "diffusers", "--checkpoint", str(checkpoint), "--timesteps",
            "999,499", "--samples", "20", "--no-uniform", "--device", "cpu", *flags]


def test_a_dangling_link_among_the_reference_images(tiny_unet_dir, real_fid_flags, tmp_path,
                                                    capsys):
    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(20):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(folder / f"{i}.png")
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    flags = [real_fid_flags[0], real_fid_flags[1], "--ref-images", str(folder)]
    err = _refused(capsys, _evaluate_diffusers(tiny_unet_dir, flags))
    assert f"{folder / 'gone.png'} is a symbolic link to {tmp_path / 'deleted.png'}, which " \
           "does not exist" in err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_reference_statistics_that_are_not_finite(value, tiny_unet_dir, real_fid_flags,
                                                  tmp_path, capsys):
    import numpy as np

    stats = tmp_path / "bad-stats.npz"
    sigma = np.eye(16)
    sigma[3, 5] = value
    np.savez(stats, mu=np.zeros(16), sigma=sigma)
    flags = real_fid_flags[:2] + ["--ref-stats", str(stats)]
    err = _refused(capsys, _evaluate_diffusers(tiny_unet_dir, flags))
    assert f"FID reference statistics {stats} holds NaN or infinite values" in err


def _with_config(unet_dir: Path, tmp_path: Path, **changes) -> Path:
    """A copy of a diffusers model whose UNet config says ``changes`` instead."""
    import shutil

    copy = tmp_path / f"unet-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(unet_dir, copy)
    config = copy / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    return copy


@pytest.mark.parametrize("size, message", [
    (-4, "sample_size must be a positive integer (pixels a side), got -4"),
    (0, "sample_size must be a positive integer (pixels a side), got 0"),
    ("8", "sample_size must be a positive integer (pixels a side), got '8'"),
    (3, "cannot evaluate one sample of its shape 1x3x3 ("),  # too small for its downsampling
    (2**40, "need about"),  # far more memory than this machine has
])
def test_a_unet_config_whose_sample_size_cannot_run(size, message, tiny_unet_dir,
                                                    real_fid_flags, tmp_path, capsys):
    checkpoint = _with_config(tiny_unet_dir, tmp_path, sample_size=size)
    assert message in _refused(capsys, _evaluate_diffusers(checkpoint, real_fid_flags))


@pytest.mark.parametrize("command", ["evaluate", "estimate"])
def test_a_unet_conditioned_on_labels_by_its_embedding_type_is_refused(command, tiny_unet_dir,
                                                                       real_fid_flags,
                                                                       tmp_path, capsys):
    """``class_embed_type`` without ``num_class_embeds`` is class-conditional too: its forward
    needs labels no study gives it (the estimate's FLOP count raised a traceback there)."""
    checkpoint = _with_config(tiny_unet_dir, tmp_path, class_embed_type="identity")
    argv = (_evaluate_diffusers(checkpoint, real_fid_flags) if command == "evaluate" else
            ["study", "--model", "diffusers", "--checkpoint", str(checkpoint), "--steps", "4",
             "--estimate", "--device", "cpu"])
    assert "class-conditional diffusers UNets are not supported" in _refused(capsys, argv)


def test_a_sample_shape_that_cannot_be_allocated_is_one_line(tiny_unet_dir, tmp_path):
    """The model's first evaluation (counting its FLOPs): a tensor of its sample shape that
    cannot be allocated at all is a UsageError, whichever command asked."""
    from autodiff_optuna.errors import UsageError
    from autodiff_optuna.metrics.flops import layer_costs
    from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel

    model = DiffusersUNetModel("huge", _with_config(tiny_unet_dir, tmp_path, sample_size=2**32))
    with pytest.raises(UsageError, match=r"cannot evaluate one sample of its shape "
                                         r"1x4294967296x4294967296 \(.*overflow") as err:
        layer_costs(model)
    assert len(str(err.value).splitlines()) == 1


def test_a_bin_checkpoint_in_another_pickle_protocol_loads_without_warnings(tiny_unet_dir,
                                                                            tmp_path):
    """torch warns that it reads a .bin of pickle protocol 3 with its restricted unpickler: it
    loads, and the user has nothing to do about it, so nothing is shown."""
    import warnings

    import torch
    from safetensors.torch import load_file

    from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel

    copy = _with_config(tiny_unet_dir, tmp_path, sample_size=8)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), copy / "unet" / "diffusion_pytorch_model.bin",
               pickle_protocol=3, _use_new_zipfile_serialization=False)
    weights.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whatever pyproject.toml's filters say
        model = DiffusersUNetModel("bin", copy)
    assert model.sample_shape == (1, 8, 8)
    with pytest.warns(UserWarning, match="Detected pickle protocol 3"):  # what was silenced
        torch.load(copy / "unet" / "diffusion_pytorch_model.bin", weights_only=True)


# -- --timeout: a search stops between trials and resumes ----------------------------------------

def test_a_timeout_that_is_no_number_of_seconds(tmp_path, capsys):
    new = tmp_path / "new.db"
    for value in ("-1", "nan", "inf"):
        assert "--timeout must be a number of seconds, 0 or more" in _refused(capsys, [
            "study", "--model", "digits", "--steps", "2", "--timeout", value,
            "--storage", f"sqlite:///{new}"])
    assert not new.exists()


@pytest.mark.slow  # three small studies
def test_a_search_stopped_by_timeout_resumes_to_its_total(tmp_path, capsys):
    """No clock: --timeout 0 starts no trial, so where it stops is known; the same command
    without it resumes to the total."""
    from autodiff_optuna.search.fidelity import n_evaluated

    url = f"sqlite:///{tmp_path}/s.db"
    base = ["study", "--model", "digits", "--steps", "2", "--samples", "80", "--population",
            "3", "--quiet", "--stage", "1", "--storage", url]
    assert main(base + ["--trials", "2"]) == 0
    capsys.readouterr()
    assert main(base + ["--trials", "4", "--timeout", "0"]) == 0
    err = capsys.readouterr().err
    assert ("stopped by --timeout 0s, between trials: stage 1 has 2 of 4 trials; rerun the "
            "same command to resume study 'digits-k2'") in err and "Traceback" not in err
    study = optuna.load_study(study_name="digits-k2", storage=url)
    assert n_evaluated(study) == 2
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert main(base + ["--trials", "4", "--timeout", "3600"]) == 0  # a timeout not reached
    assert n_evaluated(study) == 4


def test_a_refused_grid_leaves_no_folder_behind(tmp_path, capsys):
    schedule = tmp_path / "s.json"
    schedule.write_text(SearchedSchedule("digits", "ddim", [750, 500, 250, 0], [[]] * 4).to_json())
    out = tmp_path / "new" / "deeper" / "grid.bad"
    assert main(["sample", "--schedule", str(schedule), "--n", "4", "--out", str(out)]) == 2
    assert "unknown file extension" in error_line(capsys)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow  # a process of its own: its exit is what tidies
def test_a_refused_study_leaves_no_wal_files(tmp_path):
    """A writable open of an SQLite file puts it in WAL mode; a study refused on it (here a
    foreign study of the same name) exits leaving the folder as it found it."""
    url = f"sqlite:///{tmp_path}/s.db"
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name="theirs", storage=storage)
    storage.engine.dispose()  # another program's, closed: the study command is alone on it
    before = sorted(os.listdir(tmp_path))
    done = subprocess.run([sys.executable, "-m", "autodiff_optuna", "study", "--model", "digits",
                           "--steps", "3", "--name", "theirs", "--storage", url],
                          capture_output=True, text=True, timeout=CEILING)
    assert done.returncode == 2 and "not made by autodiff_optuna" in done.stderr
    assert sorted(os.listdir(tmp_path)) == before
    assert optuna.get_all_study_names(url) == ["theirs"]  # an empty foreign study is kept


# -- a second adversarial run: outputs onto a database, masks named twice, an unfinished stage 1

@pytest.mark.parametrize("command", ["export", "sample"])
def test_an_output_never_replaces_a_study_database(command, url, capsys):
    """``export --out studies/autodiff.db`` wrote the schedule over every trial."""
    path = url[len("sqlite:///"):]
    before = _dump(url)
    argv = ([command, "--name", NAME, "--storage", url] if command == "export" else
            [command, "--schedule", "absent.json"])
    err = _refused(capsys, argv + ["--out", path])
    assert f"{path} is an SQLite database" in err and "never replaces" in err
    assert _dump(url) == before
    assert "must name a file, got an empty path" in _refused(capsys, argv + ["--out", ""])


def test_a_layer_named_twice_at_a_step_is_skipped_once(url, tmp_path, capsys):
    """A hand-edited mask naming a layer twice: sampled as `evaluate --skip` reads it (it was a
    traceback: the layer's forward was restored twice)."""
    from autodiff_optuna.models import load_model
    from autodiff_optuna.schedule_sampling import load_schedule

    data = _schedule_file(url, tmp_path, capsys)
    layer = next(iter(load_model("digits", "cpu").skippable_layers()))
    data["skip"] = [[layer, layer]] + data["skip"][1:]
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(data))
    assert load_schedule(path).skip == [[layer]] + data["skip"][1:]
    assert main(["sample", "--schedule", str(path), "--n", "2", "--out",
                 str(tmp_path / "g.png")]) == 0


def test_stage_2_alone_waits_for_an_unfinished_stage_1(url, capsys):
    """Stage 1 stopped short of its run's target (Ctrl-C): stage 2 alone would breed from its
    early elites and never see the rest."""
    optuna.load_study(study_name=NAME, storage=url).set_user_attr(record.TARGET_ATTR, 5)
    before = _dump(url)
    err = _refused(capsys, ["study", "--model", "digits", "--steps", "2", "--samples", "80",
                            "--population", "2", "--stage", "2", "--storage", url, "--quiet"])
    assert f"stage 1 of study '{NAME}' has 2 of the 5 trials its last run aimed at" in err
    assert "(--stage 1 --trials 5, or both" in err and "as it is (--stage 1 --trials 2)" in err
    assert _dump(url) == before
