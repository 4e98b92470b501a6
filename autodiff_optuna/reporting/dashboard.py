"""``dashboard``: optuna-dashboard on a study database, on loopback only, with the artifact
store the report attaches sample grids to (``storage.artifacts_dir``: the same rule both ways)."""

import shutil
import sys
from pathlib import Path

from autodiff_optuna.errors import UsageError
from autodiff_optuna.storage import DEFAULT_STORAGE, artifacts_dir, open_storage

HOST = "127.0.0.1"  # the dashboard can edit studies: never on a public interface


def command(url: str | None, artifacts: str | None, port: int) -> list[str]:
    """The optuna-dashboard command line; a bad database is refused here in one line."""
    url = url or DEFAULT_STORAGE
    open_storage(url)  # one-line errors, and the tables exist before the dashboard looks
    # the venv's script first: `python -m autodiff_optuna` may run without the venv on PATH
    exe = (shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
           or shutil.which("optuna-dashboard"))
    if exe is None:
        raise UsageError("optuna-dashboard is not installed (pip install -r requirements.txt)")
    directory = artifacts_dir(url, artifacts)
    directory.mkdir(parents=True, exist_ok=True)
    return [exe, url, "--host", HOST, "--port", str(port), "--artifact-dir", str(directory)]
