"""The one error type the CLI turns into a single line and exit code 2."""


class UsageError(Exception):
    """Bad input or a missing resource: the user can fix it, so no traceback is shown."""


def one_line(err: BaseException) -> str:
    """An exception's message in one line, for a UsageError or a notice (a database driver's
    own message where SQLAlchemy wraps it in ``orig``)."""
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def printable(text: str) -> str:
    """A message as one line: a line break or other control character in it (a study name, a
    layer name or a path may hold any) is shown escaped, as ``repr`` shows it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
