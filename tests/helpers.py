"""What several test modules share."""

# How long a test may wait on a process it started: long enough that only a hung process ever
# reaches it, however loaded the machine. Tests wait on the state they need, never on a clock;
# this ceiling only ends what hangs for good.
CEILING = 1800  # seconds


def error_line(capsys) -> str:
    """What a command printed on stderr, checked to be one ``error: ...`` line (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    return err
