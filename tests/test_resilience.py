"""Killed workers at every point of a two-stage study, Ctrl-C, many workers on one database, bad
databases, failing candidates.

Tests wait on the state they need (a trial running, a study created), never on a clock: a worker
that ends before reaching that state fails the test with its stderr, and the ``spawn`` fixture
kills and reaps every worker, also when a test fails.
"""

import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import torch
from helpers import CEILING
from optuna.trial import TrialState

from autodiff_optuna import search
from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics import load_scorer
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel
from autodiff_optuna.search.config import SearchConfig
from autodiff_optuna.search.fidelity import counts_toward_target, is_carried, is_evaluated
from autodiff_optuna.storage import open_storage, record

GENERATION = "EvolutionarySampler:generation"
POSTGRES = os.environ.get("AUTODIFF_TEST_POSTGRES_URL")
NAME, TRIALS, STAGE2_TRIALS = "digits-k3", 6, 4


@pytest.fixture
def fresh_postgres():
    """A new, empty database on the test server, dropped afterwards."""
    from sqlalchemy import create_engine, make_url

    server = make_url(POSTGRES)
    database = f"autodiff_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    try:
        yield server.set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.dispose()


def _study_args(url, trials=TRIALS, name=NAME, stage="both", extra=()):
    return ["study", "--model", "digits", "--steps", "3", "--stage", stage, "--trials",
            str(trials), "--stage2-trials", str(STAGE2_TRIALS), "--samples", "200",
            "--population", "4", "--heartbeat", "1", "--storage", url, "--name", name, "--quiet",
            "--solver", "ddim", *extra]  # one queued spacing a trial, as these tests count them


def _study_args_stage1(url, trials=TRIALS, name=NAME):
    args = _study_args(url, trials, name, stage="1")
    del args[args.index("--stage2-trials"):][:2]
    return args


def _trials(url, name):
    """The study's trials, read afresh; [] while the database or the study does not exist."""
    try:
        storage = open_storage(url)  # read-only: never creates what a worker is creating
    except UsageError:
        return []
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()  # no connection of this process outlives the read


def _wait_for_running(worker, url, name, min_complete):
    """The number of a running trial of ``name`` once ``min_complete`` trials are complete."""
    while worker.poll() is None:
        trials = _trials(url, name)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        # a trial whose candidate is written whole (the objective records its time steps then)
        running = [t for t in trials
                   if t.state == TrialState.RUNNING and "timesteps" in t.user_attrs]
        if len(complete) >= min_complete and running:
            return running[0].number
        time.sleep(0.05)
    raise AssertionError(f"the worker ended (rc {worker.returncode}) before a trial of {name} "
                         f"ran: {worker.err_path.read_text()[-2000:]}")


def _interrupt_a_trial(spawn, args, url, name, sig, min_complete):
    """Run ``args`` and send ``sig`` once a trial of ``name`` runs, again (the same command
    resumes) until the signal lands inside a trial: on a loaded machine the trial seen running
    may end before the signal arrives. The worker, and the trial the signal interrupted (read
    after it: left running by SIGKILL, failed by Ctrl-C)."""
    left = TrialState.RUNNING if sig == signal.SIGKILL else TrialState.FAIL
    while True:
        before = {t.number for t in _trials(url, name) if t.state == left}
        worker = spawn(args)
        _wait_for_running(worker, url, name, min_complete)
        worker.send_signal(sig)
        worker.wait()
        # a trial whose candidate was written whole: the signal may also land in the next
        # trial's ask, before its parameters exist (that one is neither retried nor counted)
        hit = [t.number for t in _trials(url, name) if t.state == left and t.number not in before
               and "timesteps" in t.user_attrs]
        if hit:
            return worker, hit[0]


def _snapshot(url, name):
    return {t.number: (t.params, t.values) for t in _trials(url, name) if is_evaluated(t)}


def _assert_finished(url, before=None):
    """Both stages reached their targets (new evaluations: stage 1's elites carried into stage
    2 are not among them), nothing runs or waits, no candidate was scored twice, and every
    trial evaluated before an interruption is as it was."""
    for name, target in ((NAME, TRIALS), (f"{NAME}-stage2", STAGE2_TRIALS)):
        trials = _trials(url, name)
        evaluated = [t for t in trials if is_evaluated(t)]
        assert sum(map(counts_toward_target, trials)) == target, name
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        candidates = [tuple(sorted(t.params.items())) for t in evaluated]
        assert len(set(candidates)) == len(candidates), f"a candidate of {name} scored twice"
        for number, kept in (before or {}).get(name, {}).items():
            assert (trials[number].params, trials[number].values) == kept
    stage1 = optuna.load_study(study_name=NAME, storage=open_storage(url))
    assert stage1.user_attrs["stage2_study"] == f"{NAME}-stage2"


def _assert_retried_once(url, name, killed):
    trials = _trials(url, name)
    dead = trials[killed]
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and is_evaluated(retries[0])
    assert retries[0].params == dead.params  # the same candidate
    assert retries[0].system_attrs[GENERATION] == dead.system_attrs[GENERATION]


# -- kill -9 at every point of a two-stage study ------------------------------------------------

@pytest.mark.slow  # three worker processes
def test_sigkill_during_each_stage_is_resumed_without_loss(spawn, tmp_path):
    """kill -9 during stage 1, rerun, kill -9 during stage 2, rerun: the same command each time.
    Each killed trial is retried once, as the same candidate in the same generation."""
    url = f"sqlite:///{tmp_path}/kill.db"
    killed = {}
    for name in (NAME, f"{NAME}-stage2"):
        _, killed[name] = _interrupt_a_trial(spawn, _study_args(url), url, name, signal.SIGKILL,
                                             min_complete=1)
    before = {name: _snapshot(url, name) for name in killed}
    # no waiting: the rerun (the same command, in this process) waits until the killed trial's
    # heartbeat is stale
    assert main(_study_args(url)) == 0
    _assert_finished(url, before)
    for name, number in killed.items():
        _assert_retried_once(url, name, number)


@pytest.mark.slow  # waits a heartbeat grace period (2 s)
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path):
    """A worker killed between a trial's start and its first heartbeat leaves the trial RUNNING
    with no beat, which Optuna's stale check passes over: a worker waiting for it fails it and
    queues its candidate again, as for a stale one, instead of waiting for ever (a rerun in
    ``test_sigkill_during_each_stage_is_resumed_without_loss`` once did, on a loaded machine)."""
    from autodiff_optuna.search.run import _wait_for_other_workers, retry_stale_trial
    from autodiff_optuna.storage.optuna_internals import trial_id, unbeaten_trial_ids

    path = tmp_path / "h.db"
    storage = open_storage(f"sqlite:///{path}", heartbeat=1, on_stale_trial=retry_stale_trial,
                           writable=True)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 3)})  # no beat recorded
    assert unbeaten_trial_ids(study) == [trial_id(trial)]
    # waits one grace period (2 s at a 1 s heartbeat) by its own clock, then fails and retries it
    _wait_for_other_workers(study, progress=False, poll=0.1)
    first, retried = study.get_trials(deepcopy=False)
    assert first.state == TrialState.FAIL
    assert retried.state == TrialState.WAITING and retried.params == first.params


def _copy_database(source, target):
    """A consistent copy of an SQLite database, its write-ahead log included."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


@pytest.fixture(scope="module")
def stage1_done(tmp_path_factory):
    """A database whose stage 1 has finished and whose stage 2 does not exist: the state a
    worker killed between the two stages leaves (the same rows, whenever the kill lands)."""
    path = tmp_path_factory.mktemp("stage1") / "s.db"
    assert main(_study_args_stage1(f"sqlite:///{path}")) == 0
    return path


def _stage1_copy(stage1_done, tmp_path):
    path = tmp_path / "s.db"
    _copy_database(stage1_done, path)
    return f"sqlite:///{path}"


def _context_of(stage1: optuna.Study) -> search.SearchContext:
    """The search context of the process that made ``stage1``, from its stored configuration."""
    stored = search.stored_config(stage1)
    fields = SearchConfig.defaults().keys() | {"model", "steps"}
    return search.SearchContext.build(SearchConfig(**{k: stored[k] for k in fields}))


@pytest.mark.slow  # a study of both stages per state
@pytest.mark.parametrize("state", ["stage1-complete", "stage2-created", "stage2-half-made",
                                   "stage2-half-carried"])
def test_a_kill_between_the_stages_is_resumed(stage1_done, tmp_path, capsys, state):
    """Killed after stage 1 completed, (a) before stage 2 was created, (b) once it was created
    with stage 1's elites carried into it and no trial run, (c) while Optuna had created it
    but before its configuration was written, (d) the same once an elite was carried into it:
    the same command finishes both stages."""
    url = _stage1_copy(stage1_done, tmp_path)
    storage = open_storage(url, writable=True)
    stage1 = optuna.load_study(study_name=NAME, storage=storage)
    if state == "stage2-created":
        stage2 = search.open_stage2(_context_of(stage1), stage1, storage, None)
        assert stage2.trials and all(t.state == TrialState.COMPLETE and is_carried(t)
                                     for t in stage2.trials)
    elif state.startswith("stage2-half"):
        half = optuna.create_study(study_name=f"{NAME}-stage2", storage=storage,
                                   directions=["minimize", "minimize"])
        record.mark(half)  # what creation writes first
        half.set_user_attr("stage", 2)
        if state == "stage2-half-made":
            half.enqueue_trial({"t0": 900, "t1": 500, "t2": 100})
        else:
            half.add_trial(optuna.trial.create_trial(values=[9.0, 1.0],
                                                     user_attrs={"stage1_trial": 0}))
    before = {NAME: _snapshot(url, NAME)}
    assert main(_study_args(url)) == 0
    _assert_finished(url, before)


@pytest.mark.slow  # 2.2 s (False) on the idle machine: out of the fast subset
@pytest.mark.parametrize("queued", [False, True])
def test_a_half_made_stage1_is_made_again(tmp_path, queued):
    """Killed between Optuna creating the study and writing its configuration: rerunning the
    command makes it anew (it holds no trial that ever ran) instead of refusing it for good."""
    url = f"sqlite:///{tmp_path}/s.db"
    half = optuna.create_study(study_name=NAME, storage=open_storage(url, writable=True))
    record.mark(half)  # what creation writes first
    if queued:
        half.set_user_attr("stage", 1)
        half.enqueue_trial({"t0": 998, "t1": 3, "t2": 1})
    assert main(_study_args_stage1(url, trials=3)) == 0
    trials = _trials(url, NAME)
    assert sum(is_evaluated(t) for t in trials) == 3
    assert trials[0].user_attrs["spacing"] == "uniform"  # made from the start


def test_a_foreign_study_with_trials_is_refused_and_kept(tmp_path, error_line):
    url = f"sqlite:///{tmp_path}/s.db"
    foreign = optuna.create_study(study_name=NAME, storage=open_storage(url, writable=True))
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert main(_study_args_stage1(url)) == 2
    assert "not made by autodiff_optuna" in error_line()
    assert [t.state for t in _trials(url, NAME)] == [TrialState.COMPLETE] * 2


# -- Ctrl-C ---------------------------------------------------------------------------------------

@pytest.mark.slow  # two worker processes
def test_ctrl_c_marks_the_trial_and_says_how_to_resume(spawn, tmp_path):
    url = f"sqlite:///{tmp_path}/int.db"
    worker, interrupted = _interrupt_a_trial(spawn, _study_args_stage1(url, trials=50), url,
                                             NAME, signal.SIGINT, min_complete=2)
    assert worker.returncode == 130
    # the one line saying how to resume, with the command: no traceback, no library warning
    assert worker.err_path.read_text().strip() == \
        f"interrupted; rerun the same command to resume study {NAME!r}: " \
        f"python -m autodiff_optuna {shlex.join(_study_args_stage1(url, trials=50))}"
    trials = _trials(url, NAME)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[interrupted].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted]
    assert [(t.state, t.params) for t in retries] == \
        [(TrialState.WAITING, trials[interrupted].params)]
    # the command again, in this process, far enough to run every queued trial (the standard
    # spacings not reached yet, then the retry)
    target = sum(is_evaluated(t) or t.state == TrialState.WAITING for t in trials)
    assert main(_study_args_stage1(url, trials=target)) == 0
    retried = [t for t in _trials(url, NAME) if t.system_attrs.get("failed_trial") == interrupted]
    assert is_evaluated(retried[0])


# -- several workers on one new database ----------------------------------------------------------

@pytest.mark.slow  # three worker processes
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_three_workers_start_together_on_a_new_database(spawn, tmp_path, request, backend):
    """They race to create Optuna's tables and the study itself; each must survive it."""
    if backend == "postgresql":
        if not POSTGRES:
            pytest.skip("AUTODIFF_TEST_POSTGRES_URL not set (.ci/run sets it)")
        url = request.getfixturevalue("fresh_postgres")
    else:
        url = f"sqlite:///{tmp_path}/new.db"
    trials = 6
    workers = [spawn(_study_args_stage1(url, trials)) for _ in range(3)]
    for w in workers:
        assert w.wait() == 0, w.err_path.read_text()
    study = optuna.load_study(study_name=NAME, storage=url)
    # the preset prunes with multi-fidelity: evaluated = complete + stopped early by the pruner
    evaluated = [t for t in study.trials if is_evaluated(t)]
    assert len(evaluated) == trials  # exactly the total, whichever worker got there
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    candidates = [tuple(t.user_attrs["timesteps"]) for t in evaluated]
    assert len(set(candidates)) == len(candidates)  # no candidate scored twice
    unscored = [t for t in study.get_trials(states=(TrialState.PRUNED,)) if not is_evaluated(t)]
    assert all("surplus" in t.user_attrs or "duplicate_of" in t.user_attrs for t in unscored)
    generations = sorted({t.system_attrs[GENERATION] for t in evaluated})
    assert generations == list(range(len(generations)))
    for g in generations[:-1]:  # every finished generation is full before the next begins
        assert sum(t.system_attrs[GENERATION] == g for t in evaluated) >= 4


def test_a_queued_trial_is_popped_by_one_worker_only(tmp_path):
    """Two workers ask at once for the one queued trial: the second reads it WAITING just before
    the first sets it RUNNING. Only one may run it (SQLite ignores SELECT ... FOR UPDATE), else
    both score it and the second's tell fails: "Cannot tell a COMPLETE trial"."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path}/s.db"
    first, second = open_storage(url, writable=True), open_storage(url, writable=True)
    optuna.create_study(study_name="s", storage=first).enqueue_trial({"x": 1})
    studies = [optuna.load_study(study_name="s", storage=s) for s in (first, second)]
    asked = {}

    def first_pops_meanwhile(conn, cursor, statement, *args):
        # the second worker's pop is about to write: the first worker pops the trial now
        if statement.lstrip().upper().startswith("UPDATE TRIALS") and "first" not in asked:
            asked["first"] = studies[0].ask().number

    event.listen(second.engine, "before_cursor_execute", first_pops_meanwhile)
    asked["second"] = studies[1].ask().number
    assert asked == {"first": 0, "second": 1}  # the second made a trial of its own
    assert [t.state for t in studies[0].get_trials()] == [TrialState.RUNNING] * 2


# -- databases that are wrong -------------------------------------------------------------------

@pytest.mark.slow  # 6.1 s on the idle machine: out of the fast subset
def test_read_only_and_newer_schema_databases(tmp_path, capsys, error_line):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    assert main(["study", "--model", "digits", "--steps", "2", "--trials", "2", "--samples", "80",
                 "--population", "2", "--stage", "1", "--storage", url, "--quiet"]) == 0
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    capsys.readouterr()
    assert main(["study", "--model", "digits", "--steps", "2", "--storage", read_only]) == 2
    assert "readonly" in error_line().replace("-", "").replace(" ", "")
    assert main(["best", "--name", "digits-k2", "--storage", read_only]) == 0  # reading is fine
    capsys.readouterr()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v9.9.9.z'")
    assert main(["best", "--name", "digits-k2", "--storage", url]) == 2
    assert "cannot open storage" in error_line()
    with sqlite3.connect(db) as conn:
        complete = "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
        assert conn.execute(complete).fetchone()[0] == 2


@pytest.mark.parametrize("command", ["best", "export", "report"])
def test_reading_commands_create_nothing(tmp_path, error_line, command):
    url = f"sqlite:///{tmp_path}/new.db"
    argv = [command, "--name", NAME, "--storage", url]
    assert main(argv + (["--out", str(tmp_path / "s.json")] if command == "export" else [])) == 2
    assert "no database at" in error_line()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["list", "best", "report", "delete"])
def test_a_database_of_something_else_is_refused_unchanged(tmp_path, error_line, command):
    """An SQLite file without Optuna's tables (empty, or another program's) gets one line that
    says so, and no command, not even a report (which writes to a study it reports), adds
    Optuna's tables to it."""
    empty, other = tmp_path / "empty.db", tmp_path / "other.db"
    empty.touch()
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text)")
    conn.close()
    before = other.read_bytes()
    for db in (empty, other):
        argv = [command, "--storage", f"sqlite:///{db}"]
        assert main(argv + (["--name", NAME, "--yes"] if command == "delete" else [])) == 2
        assert "holds no Optuna studies" in error_line()
    assert empty.read_bytes() == b"" and other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "other.db"]


def test_a_database_whose_first_study_stopped_making_its_tables(tmp_path, error_line):
    """Optuna makes ``studies`` and ``version_info`` first: a first study stopped there left a
    file every reading command called read-only ("attempt to write a readonly database")."""
    half = tmp_path / "half.db"
    with sqlite3.connect(half) as conn:
        conn.execute("CREATE TABLE studies (study_id INTEGER)")
        conn.execute("CREATE TABLE version_info (version_info_id INTEGER)")
    conn.close()
    assert main(["list", "--storage", f"sqlite:///{half}"]) == 2
    assert "its tables are half made" in error_line()


@pytest.mark.parametrize("url, shown", [
    ("postgresql://user:s3cret@dbhost:5432x/db", "postgresql://user:***@dbhost:5432x/db"),
    ("postgresql://user:s3/cr@et@[::1/db", "postgresql://user:***@[::1/db"),
    ("postgresql:/user:s3cret@dbhost/db", "postgresql:***@dbhost/db"),
    ("postgresql//user:s3cret@dbhost/db", "postgresql//user:***@dbhost/db"),
])
def test_an_unparsable_url_keeps_its_password_hidden(url, shown, error_line):
    assert main(["list", "--storage", url]) == 2
    line = error_line()
    assert "s3" not in line and f"not a valid storage URL: {shown} (" in line


def test_a_wal_database_of_something_else_is_left_as_it_was(tmp_path):
    """Checking it makes SQLite create its -wal and -shm files: they go when the command ends."""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes (text)")
    conn.commit()
    conn.close()
    done = subprocess.run([sys.executable, "-m", "autodiff_optuna", "list", "--storage",
                           f"sqlite:///{other}"], capture_output=True, text=True, timeout=CEILING)
    assert done.returncode == 2 and "holds no Optuna studies" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["other.db"]


@pytest.mark.slow  # 10.7 s on the idle machine: out of the fast subset
@pytest.mark.parametrize("url, message", [
    ("sqlite://", "in memory"),
    ("sqlite:///:memory:", "in memory"),
    ("sqlite:///{tmp_path}", "is a directory"),
])
def test_storage_that_cannot_hold_a_study(tmp_path, error_line, url, message):
    url = url.format(tmp_path=tmp_path)
    assert main(["study", "--model", "digits", "--steps", "2", "--storage", url]) == 2
    assert message in error_line()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 2.1 s on the idle machine: out of the fast subset
def test_a_database_that_turns_read_only_mid_run_is_a_storage_error(tmp_path):
    """Whichever write fails first, the search stops with the database's own error (which the
    CLI prints as one line), never Optuna's internal assertion."""
    from sqlalchemy import event
    from sqlalchemy.exc import SQLAlchemyError

    ctx = search.SearchContext.build(SearchConfig("digits", 2, samples=80, population=2))
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", writable=True)
    study = search.open_stage1(ctx, "ro", storage)

    def turn_read_only(study, trial):
        if trial.number == 1:
            event.listen(storage.engine, "connect",
                         lambda conn, _: conn.execute("PRAGMA query_only = ON"))
            storage.engine.dispose()

    with pytest.raises((optuna.exceptions.StorageInternalError, SQLAlchemyError)):
        search.run(ctx, study, trials=6, progress=False, callbacks=[turn_read_only])
    kept = optuna.load_study(study_name="ro", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert [t.state for t in kept.trials[:2]] == [TrialState.COMPLETE] * 2


def test_unreachable_postgresql(error_line):
    assert main(["best", "--name", "x", "--storage",
                 "postgresql+psycopg://nobody@127.0.0.1:1/none"]) == 2
    assert "cannot open storage postgresql+psycopg://nobody@127.0.0.1:1/none" in error_line()


class NaNBelow300(DiffusersUNetModel):
    """A real (tiny) network with a defect: its output is NaN at low time steps."""

    def predict_noise(self, x, t, labels=None):
        eps = super().predict_noise(x, t, labels)
        return eps * float("nan") if int(t) < 300 else eps


@pytest.mark.slow  # 3.4 s on the idle machine: out of the fast subset
def test_non_finite_samples_fail_the_trial_and_the_study_goes_on(tiny_unet_dir, tmp_path):
    model = NaNBelow300("nan-net", tiny_unet_dir)
    config = SearchConfig("digits", 2, samples=80, population=3)
    ctx = search.SearchContext(config, model, load_scorer("digits"),
                               {"uniform": (500, 0), "trailing": (999, 499)}, layer_costs(model))
    study = search.open_stage1(ctx, "nan", f"sqlite:///{tmp_path}/n.db")
    search.run(ctx, study, trials=4, progress=False)
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert failed and all("not finite" in t.user_attrs["fail_reason"] for t in failed)
    assert all(min(t.user_attrs["timesteps"]) < 300 for t in failed)
    assert study.trials[0].user_attrs["timesteps"] == [500, 0]  # the uniform baseline failed

    always_nan = NaNBelow300("nan-net", tiny_unet_dir)
    with torch.no_grad():
        always_nan.unet.conv_out.bias.fill_(float("nan"))
    ctx = search.SearchContext(config, always_nan, load_scorer("digits"), ctx.spacings,
                               layer_costs(model))
    broken = search.open_stage1(ctx, "always-nan", f"sqlite:///{tmp_path}/n.db")
    with pytest.raises(UsageError, match="3 trials in a row failed"):
        search.run(ctx, broken, trials=3, progress=False, max_failures=3)
    assert len(broken.get_trials(states=(TrialState.FAIL,))) == 3
