"""The one error type the CLI turns into a single line and exit code 2."""


class UsageError(Exception):
    """Bad input or a missing resource: the user can fix it, so no traceback is shown."""


def one_line(err: BaseException) -> str:
    """An exception's message in one line, for a UsageError or a notice (a database driver's
    own message where SQLAlchemy wraps it in ``orig``)."""
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
