"""Where and how this process computes and ends: the device a command runs its models on, the
CPU threads torch uses, telling an allocation that failed from a bug, and how Ctrl-C and a
closed output pipe end it.

Torch is imported inside each function: the commands that only read a study database never
need it.
"""

import contextlib
import os
import signal
import sys
import threading

from autodiff_optuna.errors import UsageError


def device(requested: str | None) -> str:
    """``--device``, checked here: the CPU or a CUDA GPU this machine has (default: the GPU where
    there is one). Anything else (a typo, ``meta``, a GPU that is not there) would otherwise
    fail deep inside torch, with a traceback."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(requested)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {requested!r} is not a device: use cpu or cuda[:N]") from None
    if chosen.type == "cpu":
        return str(chosen)
    if chosen.type != "cuda":
        raise UsageError(f"--device {requested!r}: only cpu and cuda[:N] run models here")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested!r}: no CUDA GPU is available on this machine "
                         "(or torch was built without CUDA); use --device cpu")
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise UsageError(f"--device {requested!r}: this machine has {count} CUDA GPU(s), "
                         f"cuda:0 to cuda:{count - 1}")
    return str(chosen)


def use_available_cores() -> int:
    """Set torch's intra-op threads to the cores this process may use: ``OMP_NUM_THREADS``
    where it is set, else the CPUs it may run on (its affinity: taskset, a container's cpuset).
    Torch's own default counts every core of the machine, so N workers started on one machine
    would each run that many threads and oversubscribe it. Returns the count."""
    import torch

    threads = available_cores()
    torch.set_num_threads(threads)
    return threads


def available_cores() -> int:
    """The cores this process may use (``use_available_cores``), without touching torch."""
    return _omp_threads() or _affinity_cores()


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive count (its first level where it lists nested ones:
    ``4,2``); None where it is unset or not a count."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def out_of_memory(err: BaseException) -> bool:
    """An allocation that failed (torch's own error on a CPU or GPU, or Python's): the input
    (a count, a batch, a model's sample size) is too large for this machine, not a bug. Torch
    is consulted only where it is loaded: an error before it was cannot be one of its own."""
    torch = sys.modules.get("torch")
    if isinstance(err, MemoryError) or (torch is not None
                                        and isinstance(err, torch.OutOfMemoryError)):
        return True
    return "can't allocate memory" in str(err)


def quiet_libraries() -> None:
    """Optuna's and the libraries' messages a user of the command line should not see."""
    import warnings

    import optuna

    # our progress lines report failed trials; Optuna's own warning would add a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # deprecation notices of the libraries' APIs this code calls are for its maintainers (the
    # test suite shows them), not lines for a user to read after a Ctrl-C
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"(autodiff_optuna|optuna)(\.|$)")


def discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail once more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (in-process)
        pass



@contextlib.contextmanager
def second_interrupt_exits():
    """The first Ctrl-C raises KeyboardInterrupt as usual, so a search stops cleanly (Optuna
    fails the running trial, and it is queued again for the resume). A second one, during that
    cleanup or at exit, ends the process at once with the same exit code: raised inside Optuna's
    or SQLAlchemy's cleanup, a KeyboardInterrupt leaves their traceback, and a trial the cleanup
    did not finish is retried through its heartbeat all the same."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main's
        yield
        return
    interrupted = False

    def first(signum, frame):
        nonlocal interrupted
        interrupted = True
        signal.signal(signal.SIGINT, again)
        raise KeyboardInterrupt

    def again(signum, frame):
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # RuntimeError: reentrant
            print("\ninterrupted again: stopped at once", file=sys.stderr, flush=True)
        os._exit(130)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if not interrupted:  # after a Ctrl-C, `again` stays until the process has exited
            signal.signal(signal.SIGINT, previous)

