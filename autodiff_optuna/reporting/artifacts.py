"""Sample grids as artifacts of the trials they belong to, for optuna-dashboard.

The files go into an ``optuna.artifacts.FileSystemArtifactStore`` (directory:
``storage.artifacts_dir``). Where the metadata goes is forced by Optuna: ``upload_artifact``
records a trial's artifact as a *trial* system attribute, which Optuna refuses to write once the
trial is finished, and every trial a report shows is finished. optuna-dashboard also reads a
trial's artifacts from *study* system attributes named ``dashboard:artifacts:<trial id>:<id>``
(its own format for artifacts uploaded through its UI), which stay writable, so that is where
the metadata is recorded; the dashboard lists the grid under its trial and serves the file from
the same store. Artifacts uploaded the regular way while a trial ran are honoured too.
"""

import json
import mimetypes
import tempfile
import uuid
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from autodiff_optuna.errors import UsageError

DASHBOARD_PREFIX = "dashboard:artifacts:"  # optuna_dashboard.artifact._backend's key prefix


def store(directory: Path) -> FileSystemArtifactStore:
    writable_folder(directory, "--artifacts")
    return FileSystemArtifactStore(str(directory))


def writable_folder(path: Path, flag: str) -> Path:
    """Create ``path`` and check that it takes files (before anything is computed or stored);
    a file in its place, a read-only or forbidden folder is one UsageError line naming
    ``flag``."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:  # read-only, no permission, a file on the way there
        raise UsageError(f"cannot write into {path} ({flag}): {err.strerror or err}") from None
    return path


def attach(storage: BaseStorage, study: optuna.Study, trial: FrozenTrial, path: Path,
           artifact_store, filename: str | None = None) -> bool:
    """Attach the file at ``path`` to ``trial`` as ``filename`` (default: its own name), unless
    the trial already has an artifact of that name (a rerun of the report). Returns whether it
    was uploaded."""
    filename = filename or path.name
    if filename in filenames(storage, study, trial):
        return False
    artifact_id = str(uuid.uuid4())
    with path.open("rb") as f:
        artifact_store.write(artifact_id, f)
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = {"artifact_id": artifact_id, "filename": filename,
            "mimetype": mimetype or "application/octet-stream", "encoding": encoding}
    storage.set_study_system_attr(_study_id(storage, study),
                                  _key(storage, study, trial) + artifact_id, json.dumps(meta))
    return True


def filenames(storage: BaseStorage, study: optuna.Study, trial: FrozenTrial) -> list[str]:
    """The file names of every artifact of ``trial``, however it was recorded."""
    names = [m.filename for m in get_all_artifact_meta(trial, storage=storage)]
    prefix = _key(storage, study, trial)
    for key, value in storage.get_study_system_attrs(_study_id(storage, study)).items():
        meta = json.loads(value) if key.startswith(prefix) else None
        if meta:  # the dashboard writes None for a deleted artifact
            names.append(meta["filename"])
    return names


def _study_id(storage: BaseStorage, study: optuna.Study) -> int:
    return storage.get_study_id_from_name(study.study_name)


def _key(storage: BaseStorage, study: optuna.Study, trial: FrozenTrial) -> str:
    trial_id = storage.get_trial_id_from_study_id_trial_number(_study_id(storage, study),
                                                               trial.number)
    return f"{DASHBOARD_PREFIX}{trial_id}:"
