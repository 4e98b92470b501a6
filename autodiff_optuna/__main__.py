import contextlib
import os
import sys

from autodiff_optuna.cli import main
from autodiff_optuna.storage import tidy_wal_files

code = main()
if code != 0:
    # A refused or interrupted command has nothing left to close (every write was committed):
    # skip the interpreter's teardown of torch and its thread pools, seconds on a loaded machine,
    # but leave the database folder as the command found it
    tidy_wal_files()
    with contextlib.suppress(OSError, ValueError):  # a reader that went away
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
sys.exit(code)
