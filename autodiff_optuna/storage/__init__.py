"""Opening a study database: Optuna's RDB storage on any SQLAlchemy URL, SQLite by default.

Every way a database can be wrong (a missing directory, a file that is not SQLite, a server that
does not answer, a schema from another Optuna) becomes one ``UsageError`` line, and nothing is
written to a database that could not be opened cleanly. A command that only reads opens the
database read-only and creates nothing.

Workers that start together on one database take a lock while Optuna creates its tables and while
a study is created (``creation_lock``): a PostgreSQL advisory lock, or for SQLite an exclusive
``flock`` on a ``<database>.lock`` file beside it, removed by its holder when it is done (only
a file this program made and marked: a file of the user's under that name is locked, never
deleted). Both are released by the operating system when a process dies, so a worker killed
half-way through creating a study never blocks the next one.

Reading a database in SQLite's write-ahead-log mode makes SQLite create its ``-wal`` and ``-shm``
files, which a read-only connection cannot remove when it closes. Where a read-only command
created them, they are removed when the process exits, by SQLite itself (``tidy_wal_files``),
which removes them only if no other connection (a running worker) uses them.
"""

import atexit
import fcntl
import gc
import os
import sqlite3
import warnings
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.storage.optuna_internals import pop_waiting_trial

DEFAULT_STORAGE = "sqlite:///studies/autodiff.db"
SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMA_LOCK_KEY = 0x0AD1FF  # any fixed number; only this program's workers take it
LOCK_SUFFIX = ".lock"
# what a lock file this program made holds: the holder removes only such a file (one left by a
# killed worker included), never a user's file that happens to have the lock's name
LOCK_MARK = b"autodiff_optuna creation lock\n"
READ_ONLY_QUERY = "?mode=ro&uri=true"  # SQLite's URI filename parameters for a read-only open
WAL_SUFFIXES = ("-wal", "-shm")  # the files SQLite keeps beside a database in WAL mode
# SQLite files this process found without WAL files, with its engines on them: tidied at exit
# (``tidy_wal_files``), so a command (a read, a refused study) leaves the folder as it found it
_TIDY_AT_EXIT: dict[Path, list] = {}


def open_storage(url: str | None = None, heartbeat: int | None = None,
                 on_stale_trial=None, writable: bool = False) -> RDBStorage:
    """Open an Optuna RDB storage.

    ``writable``: for a command that writes (a search, a report's artifacts). Optuna's tables are
    created if needed, and the database is checked up front to accept writes, so a search never
    starts on a read-only one. Without it the database must exist already, and an SQLite file is
    opened read-only: reading a study never creates or changes a file.

    With ``heartbeat`` (seconds), a running trial beats that often; one whose process died
    (SIGKILL, a lost machine) is failed after three missed beats by whichever process runs the
    next trial, and handed to ``on_stale_trial`` (which retries it).
    """
    url = url or DEFAULT_STORAGE
    shown = redact(url)
    _check_parses(url, shown)
    engine_kwargs = {}
    tidy = None  # an SQLite file whose WAL files this open will make
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if writable and url == DEFAULT_STORAGE:
            path.parent.mkdir(parents=True, exist_ok=True)
        _check_sqlite_file(url, path, must_exist=not writable)
        if not _has_wal_files(path):
            tidy = path
        if not writable:
            if tidy is not None:  # the check's own read makes SQLite create them too
                _TIDY_AT_EXIT.setdefault(tidy, [])
            _check_holds_studies(url, path)
            url = _read_only_sqlite_url(url, path)
        # several processes on one SQLite file wait for the lock instead of failing at once
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        # an unreachable server must fail fast, not hang a study
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
        if url.startswith("postgresql"):
            # A trial makes a dozen small commits; waiting for each one's WAL flush costs more
            # than the trial's bookkeeping itself. Without the wait a crash of the *server* can
            # lose the last fraction of a second of commits (never consistency): a trial left
            # RUNNING by that is retried through its heartbeat like a killed worker's.
            engine_kwargs["connect_args"]["options"] = "-c synchronous_commit=off"
    beats = {}
    if heartbeat:
        beats = dict(heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                     heartbeat_stale_trial_callback=on_stale_trial)
    try:
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with _lock(url, engine_kwargs) if writable else nullcontext():
                storage = _RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
        if tidy is not None:
            _TIDY_AT_EXIT.setdefault(tidy, []).append(storage.engine)
        if writable and url.startswith("sqlite"):
            with storage.engine.connect() as conn:  # rewrites a header field with its own value
                version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
            _fast_sqlite_commits(storage)
        return storage
    except ModuleNotFoundError as err:
        raise UsageError(f"storage {shown}: the database driver is not installed ({err.name})"
                         ) from None
    except Exception as err:  # SQLAlchemy's and Optuna's errors for a bad or unreachable database
        raise UsageError(f"cannot open storage {shown}: {one_line(err)}") from err


def writable_storage(storage: "RDBStorage | str | None") -> RDBStorage:
    """``storage`` as an open storage to write to: opened (``open_storage``) where a URL or
    None (the default) is given, as it is where it is open already."""
    if isinstance(storage, str) or storage is None:
        return open_storage(storage, writable=True)
    return storage


class _RDBStorage(RDBStorage):
    """Optuna's RDB storage, but a queued (WAITING) trial is popped by one worker only, on
    SQLite too (``optuna_internals.pop_waiting_trial``): two workers that asked at once would
    otherwise run the same trial, and the second to finish it fails with "Cannot tell a
    COMPLETE trial"."""

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        if state == TrialState.RUNNING and values is None:
            if pop_waiting_trial(self, trial_id):
                return True
        # not WAITING: Optuna's own answer (False while it runs, an error once finished)
        return super().set_trial_state_values(trial_id, state, values)


@contextmanager
def creation_lock(storage: RDBStorage):
    """Hold the database's creation lock while a study is created or completed.

    Yields True when a lock is held (SQLite, PostgreSQL): a study found without its stored
    configuration was then left half-made by a process that died, not one still writing it.
    Other databases yield False and are not locked.
    """
    if lockable(storage.url):
        with _lock(storage.url, {}):
            yield True
    else:
        yield False


def lockable(url: str) -> bool:
    """Whether ``creation_lock`` can lock a database of this URL."""
    return url.startswith(("sqlite", "postgresql"))


@contextmanager
def _lock(url: str, engine_kwargs: dict):
    """The lock workers take while Optuna creates its tables and while a study is created.

    Workers started together on an empty database would otherwise all run ``CREATE TABLE`` at
    once: on PostgreSQL all but one fail on its catalog constraints, on SQLite on "table already
    exists" or alembic's version row.
    """
    if url.startswith("sqlite"):
        with _file_lock(_sqlite_path(url)):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, **engine_kwargs)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK_KEY})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})")
    finally:
        engine.dispose()


@contextmanager
def _file_lock(database: Path):
    """An exclusive ``flock`` on ``<database>.lock``. A separate file, because closing any
    descriptor of the database itself would drop the POSIX locks SQLite holds on it. Where the
    lock file cannot be made (a read-only folder), nothing could be written there either, and
    the write check that follows says so. The holder removes the file before it lets go, so
    none is left behind (a waiter that then holds the removed file's lock takes the new one);
    a file there that this program did not make is only locked, and left as it was."""
    path = f"{database}{LOCK_SUFFIX}"
    fd = _locked(path)
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        if _ours(fd):
            with suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the lock


def _locked(path: str) -> int | None:
    """A descriptor holding the ``flock`` of the file now at ``path`` (None: it cannot be
    made or opened). A file this call makes is marked as this program's (``LOCK_MARK``)
    first."""
    while True:
        try:
            fd = _made_marked(path)
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDONLY)  # a user's file is never written to
            except FileNotFoundError:
                if os.path.lexists(path):  # a link to nothing: no lock can be had there
                    return None
                continue  # its holder removed it just now
            except OSError:
                return None
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder removed it while this process waited


def _made_marked(path: str) -> int:
    """A descriptor of a new file at ``path`` holding ``LOCK_MARK``: marked before it is
    locked, so that one left by a process killed while it waited for the lock is removed by
    the next holder. ``FileExistsError`` where there is a file (or a link) already."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, LOCK_MARK)
    except OSError:
        os.close(fd)
        with suppress(OSError):
            os.unlink(path)
        raise
    return fd


def _ours(fd: int) -> bool:
    """Whether the locked file is one this program made (a killed worker's included)."""
    with suppress(OSError):
        return os.pread(fd, len(LOCK_MARK) + 1, 0) == LOCK_MARK
    return False


def _has_wal_files(path: Path) -> bool:
    return any(Path(f"{path}{suffix}").exists() for suffix in WAL_SUFFIXES)


def _same_file(fd: int, path: str) -> bool:
    try:
        there = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


@atexit.register
def tidy_wal_files() -> None:
    """Remove the ``-wal`` and ``-shm`` files this process's opens made SQLite create: a
    read-write connection that closes as the database's last one makes SQLite checkpoint them
    into the database and remove them;
    while another process (a worker) has the database open they stay, as they must. A
    database this process cannot write keeps them."""
    if _TIDY_AT_EXIT:
        gc.collect()  # Optuna's sessions left in reference cycles still hold connections
    for path, engines in _TIDY_AT_EXIT.items():
        for engine in engines:
            engine.dispose()  # closes this process's connections first
        if not _has_wal_files(path):
            continue
        try:
            connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
            try:
                connection.execute("PRAGMA schema_version").fetchall()
            finally:
                connection.close()
        except sqlite3.Error:
            pass


def _fast_sqlite_commits(storage: RDBStorage) -> None:
    """Write-ahead logging: a trial makes a dozen small commits, and in the default rollback
    journal each one syncs the whole database file. WAL also lets readers (a report, a second
    worker) work while a trial writes. ``synchronous=NORMAL`` is durable across process crashes;
    only a power loss can drop the last commits."""
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened before the listener get it on reconnect


def redact(url: str) -> str:
    """The URL as messages show it: no password, and an SQLite file opened read-only (as
    ``open_storage`` opens it for reading) by its path."""
    from sqlalchemy.engine import make_url

    prefix = "sqlite:///file:"
    if url.startswith(prefix) and url.endswith(READ_ONLY_QUERY):
        return f"sqlite:///{url[len(prefix):-len(READ_ONLY_QUERY)]} (read-only)"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse (a port that is no number) hides it too
        return _masked(url)


def _masked(url: str) -> str:
    """``url`` with what may be a password (after the user's name, before the last ``@``)
    masked; where no ``scheme://`` can be told, all that comes before the ``@`` after its first
    colon."""
    userinfo, at, host = url.rpartition("@")
    if not at:
        return url
    scheme, slashes, user = userinfo.partition("://")
    if not slashes:  # a mistyped scheme: the first colon may be the password's
        scheme, user = "", userinfo
    name, has_password, _ = user.partition(":")
    return f"{scheme}{slashes}{name}{':***' if has_password else ''}@{host}"


def _check_parses(url: str, shown: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except Exception as err:
        raise UsageError(f"not a valid storage URL: {shown} ({one_line(err)})") from None


def _sqlite_path(url: str) -> Path:
    """The file an SQLite URL names (one ``open_storage`` has checked parses); a URL that names
    none (in memory) is refused: a study there would be lost when the command ends."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database.startswith("file:"):  # an SQLite URI filename (file:PATH?mode=ro)
        database = database[len("file:"):].split("?", 1)[0]
    if not database or database == ":memory:" or "mode=memory" in url:
        raise UsageError(f"storage {url} is in memory and would be lost when the command ends; "
                         "give a file, e.g. sqlite:///studies/autodiff.db")
    return Path(database)


def _check_sqlite_file(url: str, path: Path, must_exist: bool) -> None:
    if path.is_dir():
        raise UsageError(f"storage {url}: {path} is a directory, not an SQLite database file")
    if not path.parent.is_dir():
        raise UsageError(f"storage {url}: directory {path.parent} does not exist")
    if not path.exists():
        if must_exist:
            raise UsageError(f"storage {url}: no database at {path}; run a study first, or "
                             "give the --storage it ran with")
        return
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise UsageError(f"storage {url}: cannot read {path} ({err.strerror})") from None
    if header and header != SQLITE_MAGIC:
        raise UsageError(f"storage {url}: {path} is not an SQLite database")


def _check_holds_studies(url: str, path: Path) -> None:
    """Refuse, in one line, an SQLite file without Optuna's tables (empty, or a database of
    something else): read-only, Optuna would try to create them and fail on a message about
    writing, and a command that reads must not create them."""
    if path.stat().st_size == 0:
        tables = set()
    else:
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = {row[0] for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                connection.close()
        except sqlite3.Error as err:
            raise UsageError(f"cannot open storage {url}: {one_line(err)}") from None
    if "studies" not in tables:
        raise UsageError(f"storage {url}: {path} holds no Optuna studies (no study was ever "
                         "stored there); run a study first, or give the --storage it ran with")
    if "alembic_version" not in tables:  # Optuna's last table, stamped once the rest are made
        raise UsageError(f"storage {url}: {path} holds no Optuna studies (its tables are half "
                         "made: the first study stopped while making them); a study run on it "
                         "makes the rest")


def _read_only_sqlite_url(url: str, path: Path) -> str:
    """The same file opened read-only (SQLite's URI filename with ``mode=ro``)."""
    if "mode=ro" in url:
        return url
    return f"sqlite:///file:{path}{READ_ONLY_QUERY}"




def load_existing_study(name: str, storage: RDBStorage, hint: str = "") -> optuna.Study:
    """Load a study, or say which studies the database does hold."""
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UsageError(f"no study named {name!r} in {redact(storage.url)}; studies there: "
                         f"{known}" + (f"; {hint}" if hint else ""))
    return optuna.load_study(study_name=name, storage=storage)


DEFAULT_ARTIFACTS = "studies/artifacts"


def artifacts_dir(url: str | None, override: str | None = None) -> Path:
    """Where a storage's artifact files (sample grids) live; the report and the dashboard both
    ask here, so they agree. An SQLite file keeps them beside it (``<db dir>/artifacts``); any
    other database in ``override`` or ``studies/artifacts``."""
    if override:
        return Path(override)
    from sqlalchemy.engine import make_url

    url = url or DEFAULT_STORAGE
    try:
        database = make_url(url).database if url.startswith("sqlite") else None
    except Exception:
        database = None
    if database and database != ":memory:":
        if database.startswith("file:"):  # an SQLite URI filename (file:PATH?mode=ro&uri=true)
            database = database[len("file:"):].split("?", 1)[0]
        return Path(database).parent / "artifacts"
    return Path(DEFAULT_ARTIFACTS)
