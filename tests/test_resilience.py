"""Killed workers, Ctrl-C, many workers on PostgreSQL, bad databases, failing candidates."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.metrics.flops import layer_costs
from autodiff_optuna.models import load_scorer
from autodiff_optuna.models.diffusers_unet import DiffusersUNetModel
from autodiff_optuna.search import study as search
from autodiff_optuna.search.fidelity import is_evaluated
from autodiff_optuna.search.config import SearchConfig

GENERATION = "EvolutionarySampler:generation"
POSTGRES = os.environ.get("AUTODIFF_TEST_POSTGRES_URL")


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


def _study_cmd(url, trials, name="digits-k3", extra=()):
    return [sys.executable, "-m", "autodiff_optuna", "study", "--model", "digits", "--steps", "3",
            "--stage", "1", "--trials", str(trials), "--samples", "400", "--population", "4",
            "--heartbeat", "1", "--storage", url, "--name", name, *extra]


def _wait_for_running(url, name, min_complete, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and t.params]
        if len(complete) >= min_complete and running:
            return running[0].number
        time.sleep(0.02)
    raise AssertionError("no running trial to interrupt")


def test_sigkilled_worker_is_resumed_without_loss(tmp_path):
    url = f"sqlite:///{tmp_path}/kill.db"
    worker = subprocess.Popen(_study_cmd(url, 8), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    killed = _wait_for_running(url, "digits-k3", min_complete=3)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {t.number: (t.params, t.values, t.user_attrs) for t in
              optuna.load_study(study_name="digits-k3", storage=url).trials
              if is_evaluated(t)}
    time.sleep(3.5)  # past the grace period of three missed heartbeats
    resumed = subprocess.run(_study_cmd(url, 8), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="digits-k3", storage=url)
    by_state = {s: [t for t in study.trials if t.state == s] for s in TrialState}
    # the preset prunes with multi-fidelity: evaluated = complete + stopped early
    assert sum(is_evaluated(t) for t in study.trials) == 8
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    dead = study.trials[killed]
    assert dead.state == TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and is_evaluated(retry[0])
    assert retry[0].params == dead.params  # the same candidate
    assert retry[0].system_attrs[GENERATION] == dead.system_attrs[GENERATION]
    for number, (params, values, _) in before.items():  # nothing completed was touched
        assert (study.trials[number].params, study.trials[number].values) == (params, values)


def test_ctrl_c_marks_the_trial_and_says_how_to_resume(tmp_path):
    url = f"sqlite:///{tmp_path}/int.db"
    worker = subprocess.Popen(_study_cmd(url, 50), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    interrupted = _wait_for_running(url, "digits-k3", min_complete=2)
    worker.send_signal(signal.SIGINT)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 130
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    study = optuna.load_study(study_name="digits-k3", storage=url)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert study.trials[interrupted].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == interrupted]
    assert [(t.state, t.params) for t in retries] == \
        [(TrialState.WAITING, study.trials[interrupted].params)]
    resumed = subprocess.run(_study_cmd(url, 8), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    study = optuna.load_study(study_name="digits-k3", storage=url)
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == interrupted]
    assert is_evaluated(retried[0])


@pytest.mark.skipif(not POSTGRES, reason="AUTODIFF_TEST_POSTGRES_URL not set (.ci/run sets it)")
def test_three_workers_share_one_study_on_postgresql(fresh_postgres):
    # an empty database each time: the three workers also race to create Optuna's tables
    url, name, trials = fresh_postgres, "workers", 14
    workers = [subprocess.Popen(_study_cmd(url, trials, name), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=url)
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


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_read_only_and_newer_schema_databases(capsys, tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    assert main(["study", "--model", "digits", "--steps", "2", "--trials", "2", "--samples", "80",
                 "--population", "2", "--stage", "1", "--storage", url, "--quiet"]) == 0
    capsys.readouterr()
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    assert main(["study", "--model", "digits", "--steps", "2", "--storage", read_only]) == 2
    assert "readonly" in _err(capsys).replace("-", "").replace(" ", "")
    assert main(["best", "--name", "digits-k2", "--storage", read_only]) == 0  # reading is fine
    capsys.readouterr()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v9.9.9.z'")
    assert main(["best", "--name", "digits-k2", "--storage", url]) == 2
    assert "cannot open storage" in _err(capsys)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] == 2


def test_unreachable_postgresql(capsys):
    started = time.monotonic()
    assert main(["best", "--name", "x", "--storage",
                 "postgresql+psycopg://nobody@127.0.0.1:1/none"]) == 2
    assert "cannot open storage postgresql+psycopg://nobody@127.0.0.1:1/none" in _err(capsys)
    assert time.monotonic() - started < 30


class NaNBelow300(DiffusersUNetModel):
    """A real (tiny) network with a defect: its output is NaN at low time steps."""

    def predict_noise(self, x, t, labels=None):
        eps = super().predict_noise(x, t, labels)
        return eps * float("nan") if int(t) < 300 else eps


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
    with pytest.raises(UsageError, match="trials in a row failed"):
        search.run(ctx, broken, trials=3, progress=False)
    assert len(broken.get_trials(states=(TrialState.FAIL,))) == search.MAX_CONSECUTIVE_FAILURES
