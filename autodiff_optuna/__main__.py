import contextlib
import os
import sys

from autodiff_optuna.cli import main

code = main()
if code != 0:
    # A refused or interrupted command has nothing left to close (every write was committed):
    # skip the interpreter's teardown of torch and its thread pools, seconds on a loaded machine.
    with contextlib.suppress(OSError, ValueError):  # a reader that went away
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
sys.exit(code)
