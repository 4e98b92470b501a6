"""``delete``: resumable from wherever it was killed, refused under a live worker, and a worker
whose study is deleted under it stops in one line; read-only and refused commands leave the
file system as they found it."""

import sqlite3
import subprocess
import sys
import time

import helpers
import optuna
import pytest
from optuna.trial import TrialState
from test_results import UNIFORM, make_search

from autodiff_optuna.cli import main
from autodiff_optuna.errors import UsageError
from autodiff_optuna.storage import LOCK_MARK, open_storage, record
from autodiff_optuna.storage.optuna_internals import trial_id


def _search(url: str, name: str = "s-k4") -> optuna.Study:
    return make_search(url, [(UNIFORM, 68.0), ([496, 381, 257, 101], 8.0)],
                       [([496, 381, 257, 101], 2, 8.7, 0.110)], name=name)


def _delete(url: str, name: str, *flags: str) -> int:
    return main(["delete", "--storage", url, "--name", name, "--yes", *flags])


@pytest.mark.slow  # 1.3 s on the idle machine: out of the fast subset
def test_a_rerun_finishes_a_delete_killed_part_way(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    # killed with stage 2 gone (the order delete takes): the rerun deletes stage 1
    _search(url, "a-k4")
    optuna.delete_study(study_name="a-k4-stage2", storage=url)
    assert _delete(url, "a-k4") == 0
    # killed with stage 1 gone and its stage 2 left: the rerun of the same command finds it
    _search(url, "b-k4")
    optuna.delete_study(study_name="b-k4", storage=url)
    assert _delete(url, "b-k4") == 0
    # a stage 1 whose stage 2 was made but not yet linked to it: deleted with it
    _search(url, "c-k4").set_user_attr("stage2_study", None)
    assert _delete(url, "c-k4") == 0
    assert optuna.get_all_study_names(url) == []


def test_a_stage2_deleted_alone_leaves_its_stage1_without_it(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    stage1 = _search(url)
    assert _delete(url, "s-k4-stage2") == 0
    assert optuna.get_all_study_names(url) == ["s-k4"]
    assert record.linked_stage2_name(stage1.user_attrs) is None
    assert all(p["stage"] == 1 for p in stage1.user_attrs["result"]["front"])


def _half_made_stage2(url: str, stage1: optuna.Study, names_stage1: bool) -> optuna.Study:
    """What a study command killed while making stage 2 leaves: its marker and stage written
    first, then (``names_stage1``) the rest but its configuration, which comes last; no link
    from stage 1, nothing run."""
    study = optuna.create_study(study_name=f"{stage1.study_name}-stage2", storage=url,
                                directions=["minimize", "minimize"])
    record.mark(study)
    study.set_user_attr(record.STAGE_ATTR, 2)
    if names_stage1:
        study.set_user_attr(record.STAGE1_ATTR, stage1.study_name)
    return study


def _stage1_alone(url: str, name: str) -> optuna.Study:
    stage1 = _search(url, name)
    optuna.delete_study(study_name=f"{name}-stage2", storage=url)
    stage1.set_user_attr(record.STAGE2_ATTR, None)
    return stage1


def test_a_half_made_stage2_is_listed_and_deleted_as_such(tmp_path, capsys):
    """It was listed as foreign, and refused by delete as not made by autodiff_optuna (and one
    killed before it named its stage 1 was a KeyError)."""
    url = f"sqlite:///{tmp_path}/s.db"
    for name, names_stage1 in (("a-k4", False), ("b-k4", True), ("c-k4", True)):
        _half_made_stage2(url, _stage1_alone(url, name), names_stage1)
    capsys.readouterr()
    assert main(["list", "--storage", url]) == 0
    assert "a-k4-stage2  half made" in capsys.readouterr().out
    assert _delete(url, "a-k4-stage2") == 0  # alone
    assert _delete(url, "b-k4-stage2") == 0
    assert _delete(url, "c-k4") == 0  # with its stage 1
    assert optuna.get_all_study_names(url) == ["a-k4", "b-k4"]


def test_a_half_made_study_a_worker_finished_meanwhile_is_not_deleted(tmp_path):
    """Planned (and confirmed) while half made, then made by a study command before the delete
    took the creation lock: left as it is now."""
    from autodiff_optuna.search import deletion

    url = f"sqlite:///{tmp_path}/s.db"
    stage2 = _half_made_stage2(url, _stage1_alone(url, "a-k4"), names_stage1=True)
    planned = deletion.plan(url, "a-k4-stage2", force=False)
    assert planned.half_made == {"a-k4-stage2"}
    stage2.set_user_attr(record.CONFIG_ATTR, {"made": "meanwhile"})
    with pytest.raises(UsageError, match="was made meanwhile by a study command"):
        deletion.delete(planned, url, lambda result: None)
    assert "a-k4-stage2" in optuna.get_all_study_names(url)


def test_a_study_another_delete_removed_meanwhile_is_skipped(tmp_path):
    """Planned, then deleted by another process before this delete ran: the rest goes, and no
    KeyError from the gone study's attributes."""
    from autodiff_optuna.search import deletion

    url = f"sqlite:///{tmp_path}/s.db"
    _search(url, "a-k4")
    planned = deletion.plan(url, "a-k4", force=False)
    optuna.delete_study(study_name="a-k4-stage2", storage=url)
    deletion.delete(planned, url, lambda result: None)
    assert optuna.get_all_study_names(url) == []


def _running_trial(url: str, name: str, heartbeat: int = 60) -> int:
    """A trial of ``name`` RUNNING with a fresh heartbeat, as a worker's is (returns its id)."""
    storage = open_storage(url, heartbeat=heartbeat, writable=True)
    trial = optuna.load_study(study_name=name, storage=storage).ask()
    storage.record_heartbeat(trial_id(trial))
    return trial_id(trial)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a trial asked for, not optimized
def test_delete_is_refused_while_a_worker_beats_unless_forced(tmp_path, error_line):
    url = f"sqlite:///{tmp_path}/s.db"
    _search(url)
    _running_trial(url, "s-k4")
    assert _delete(url, "s-k4") == 2
    assert "trial 2 of 's-k4' is running: stop its worker first, or pass --force" in error_line()
    assert _delete(url, "s-k4-stage2") == 0  # the other stage runs nothing
    assert _delete(url, "s-k4", "--force") == 0
    assert optuna.get_all_study_names(url) == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_whose_worker_stopped_beating_does_not_block_delete(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    _search(url)
    stale = _running_trial(url, "s-k4")
    # its worker died long ago: its last beat is far beyond three heartbeats old
    with sqlite3.connect(f"{tmp_path}/s.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00' "
                   "WHERE trial_id = ?", (stale,))
    assert _delete(url, "s-k4") == 0


@pytest.mark.slow  # a worker process
def test_a_worker_whose_study_is_deleted_under_it_stops_in_one_line(spawn, tmp_path,
                                                                     error_line):
    url = f"sqlite:///{tmp_path}/s.db"
    worker = spawn(["study", "--model", "digits", "--steps", "3", "--stage", "1", "--trials",
                    "200", "--samples", "200", "--population", "4", "--heartbeat", "1",
                    "--storage", url, "--name", "w-k3", "--quiet"])
    _wait_for_a_running_trial(worker, url, "w-k3")
    assert _delete(url, "w-k3") == 2  # its worker beats
    assert "is running" in error_line()
    assert _delete(url, "w-k3", "--force") == 0
    assert worker.wait(timeout=helpers.CEILING) == 2
    assert worker.err_path.read_text().strip() == \
        "error: study 'w-k3' was deleted while this worker ran it: stopped"


def _wait_for_a_running_trial(worker, url: str, name: str) -> None:
    while worker.poll() is None:
        try:
            study = optuna.load_study(study_name=name, storage=url)
            if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return
        except KeyError:  # not created yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"the worker ended (rc {worker.returncode}): "
                         f"{worker.err_path.read_text()[-2000:]}")


def _wal_database(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/s.db"
    _search(url)
    with sqlite3.connect(f"{tmp_path}/s.db") as db:  # as the study command leaves it
        db.execute("PRAGMA journal_mode=WAL")
    return url


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autodiff_optuna", *args], capture_output=True,
                          text=True, timeout=helpers.CEILING)


@pytest.mark.slow  # command processes: the files are tidied as each exits
def test_read_only_commands_leave_no_wal_files(tmp_path):
    url = _wal_database(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    for command in (["list"], ["best", "--name", "s-k4"]):
        done = _cli(*command, "--storage", url)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"], command
    # a connection of another process (a worker) keeps them: they are not pulled from under it
    worker = sqlite3.connect(f"{tmp_path}/s.db")
    try:
        worker.execute("SELECT count(*) FROM studies").fetchall()
        assert _cli("list", "--storage", url).returncode == 0
        assert {"s.db-wal", "s.db-shm"} <= {p.name for p in tmp_path.iterdir()}
        assert worker.execute("SELECT count(*) FROM studies").fetchone() == (2,)
    finally:
        worker.close()


def test_a_users_file_under_the_lock_name_is_never_deleted(tmp_path):
    """The creation lock removes only a lock file this program made (a killed worker's too):
    a file of the user's that happens to be named ``<database>.lock`` is locked and kept."""
    url = f"sqlite:///{tmp_path}/s.db"
    _search(url)
    mine = tmp_path / "s.db.lock"
    mine.write_text("my notes")
    assert _delete(url, "s-k4") == 0  # a delete takes the lock
    assert mine.read_text() == "my notes"
    _search(url)
    mine.write_bytes(LOCK_MARK)  # as a worker killed while holding the lock leaves it
    assert _delete(url, "s-k4") == 0
    assert not mine.exists()


def test_a_lock_file_that_cannot_be_had_is_no_hang(tmp_path):
    """A link to nothing under the lock's name: no lock can be had there, and the command goes
    on without one (it used to retry forever)."""
    url = f"sqlite:///{tmp_path}/s.db"
    _search(url)
    (tmp_path / "s.db.lock").symlink_to(tmp_path / "nowhere" / "lock")
    assert _delete(url, "s-k4") == 0
    assert (tmp_path / "s.db.lock").is_symlink()


def test_refused_commands_leave_no_lock_file_or_folder(tmp_path, error_line):
    url = f"sqlite:///{tmp_path}/s.db"
    _search(url)
    optuna.create_study(study_name="foreign", storage=url)
    out = tmp_path / "report"
    assert main(["report", "--storage", url, "--name", "foreign", "--out", str(out)]) == 2
    assert "not made by autodiff_optuna" in error_line()
    assert _delete(url, "foreign") == 2
    error_line()
    assert not (tmp_path / "s.db.lock").exists() and not out.exists()
    assert _delete(url, "s-k4") == 0  # a delete that writes leaves no lock file either
    assert not (tmp_path / "s.db.lock").exists()
