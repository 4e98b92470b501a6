"""The one error type the CLI turns into a single line and exit code 2."""


class UsageError(Exception):
    """Bad input or a missing resource: the user can fix it, so no traceback is shown."""
