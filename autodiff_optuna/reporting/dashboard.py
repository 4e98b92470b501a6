"""``dashboard``: optuna-dashboard on a study database, on loopback only, with the artifact
store the report attaches sample grids to (``storage.artifacts_dir``: the same rule both ways)."""

import shutil
import sys
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.reporting.artifacts import writable_folder
from autodiff_optuna.storage import DEFAULT_STORAGE, artifacts_dir, open_storage

HOST = "127.0.0.1"  # the dashboard can edit studies: never on a public interface


def command(url: str | None, artifacts: str | None, port: int) -> list[str]:
    """The optuna-dashboard command line; a bad port or database is refused here in one line
    (optuna-dashboard's own refusal would be a traceback)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be in [1, 65535], got {port}")
    url = url or DEFAULT_STORAGE
    open_storage(url)  # one-line errors, and the tables exist before the dashboard looks
    # the venv's script first: `python -m autodiff_optuna` may run without the venv on PATH
    exe = (shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
           or shutil.which("optuna-dashboard"))
    if exe is None:
        raise UsageError("optuna-dashboard is not installed (pip install -r requirements.txt)")
    directory = writable_folder(artifacts_dir(url, artifacts), "--artifacts")
    return [exe, url, "--host", HOST, "--port", str(port), "--artifact-dir", str(directory)]
