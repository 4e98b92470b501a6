"""Where the files of a real model come from; nothing is ever downloaded behind the user's back.

A file is looked for, in order:

1. the path its flag names (``--checkpoint``, ``--classifier``, ``--ref-stats``, ``--inception``);
2. ``$AUTODIFF_MODELS_DIR/<name>``;
3. the default models directory, ``$XDG_CACHE_HOME/autodiff-optuna`` (``~/.cache/autodiff-optuna``);
4. where its own library keeps it, read-only: clean-fid's ``/tmp/inception-2015-12-05.pt`` and
   ``cleanfid/stats/``, the Hugging Face cache for a hub model (offline).

A file found nowhere is one ``UsageError`` line naming it, its public URL and the directory to put
it in. ``python -m autodiff_optuna download MODEL`` fetches a preset's files where there is
internet (``download`` below), with a timeout, into the first of those directories.

Every small input file the program reads (a JSON schedule or skip file, a model's JSON config) is
read through ``read_text``/``read_json``: with a size limit and UTF-8 decoding, so a wrong file
(``/dev/zero``, a binary, a Latin-1 file, JSON nested past the parser's recursion limit) is one
``UsageError`` line, never a hang or a traceback.
"""

import contextlib
import json
import math
import os
import shutil
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from autodiff_optuna.errors import UsageError

ENV_DIR = "AUTODIFF_MODELS_DIR"
# the largest input file read whole: schedules and configs are a few KiB; beyond this a path is
# the wrong file (/dev/zero would otherwise be read until memory runs out)
MAX_INPUT_BYTES = 4 << 20


def read_text(path, limit: int = MAX_INPUT_BYTES, what: str = "") -> str:
    """The UTF-8 text of an input file (a leading byte-order mark dropped); a directory, a missing
    or unreadable file, one larger than ``limit`` bytes or one that is not UTF-8 is one
    UsageError line, naming the file as ``what`` when given (e.g. "prompts")."""
    name = f"{what} {path}" if what else f"{path}"
    if Path(path).is_dir():
        raise UsageError(f"{name} is a directory, not a file")
    try:
        with Path(path).open("rb") as f:
            data = f.read(limit + 1)  # never more, whatever the file claims to be
    except OSError as err:
        raise UsageError(f"cannot read {name}: {err.strerror or err}") from None
    if len(data) > limit:
        raise UsageError(f"{name} is larger than {limit >> 20} MiB: not an input file this "
                         "program reads")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"{name} is not UTF-8 text (byte {err.start}: "
                         f"{data[err.start:err.start + 1]!r})") from None


def read_json(path) -> dict:
    """A JSON object from a small input file (``read_text``); corrupt JSON, JSON nested too
    deeply to parse, or JSON that is not an object is one UsageError line."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer too long to convert
        raise UsageError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise UsageError(f"{path} is not JSON this program reads: nested too deeply") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return data


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name (a directory name for a hub model)
    url: str  # where it is published
    flag: str  # the command-line flag that points at it directly
    what: str  # for messages: "ADM weights", ...
    hub_id: str | None = None  # a Hugging Face model repository (a directory of ``files``)
    files: tuple[str, ...] = ()  # for a hub model: the files the directory needs


def default_models_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "autodiff-optuna"


def models_dirs() -> list[Path]:
    """The directories searched, in order; the first is where a missing file should go."""
    env = os.environ.get(ENV_DIR)
    return ([Path(env).expanduser()] if env else []) + [default_models_dir()]


def missing_message(remote: RemoteFile, preset: str | None = None) -> str:
    where = models_dirs()[0]
    fetch = f"; `python -m autodiff_optuna download {preset}` fetches it" if preset else ""
    if remote.hub_id:
        return (f"missing {remote.hub_id} ({remote.what}): download {remote.url} "
                f"({', '.join(remote.files)}) into {where / remote.name} (or pass {remote.flag} "
                f"DIR|HUB_ID{fetch})")
    return (f"missing {remote.name} ({remote.what}): download {remote.url} and put it in {where} "
            f"(or pass {remote.flag} PATH{fetch})")


def resolve(remote: RemoteFile, override: str | None = None, extra_dirs=(),
            preset: str | None = None) -> Path:
    """The local path of ``remote``: the override, else the first directory holding it."""
    if override:
        path = Path(override).expanduser()
        if path.exists():
            _check_complete(remote, path)
            return path
        if remote.hub_id and _looks_like_hub_id(override):
            cached = _hub_cache(override)
            if cached is not None:
                return cached
            raise UsageError(f"{remote.flag} {override}: not a local directory, and the hub "
                             f"model is not in the Hugging Face cache (offline); download "
                             f"https://huggingface.co/{override} first")
        raise UsageError(f"{remote.flag} {override}: no such file")
    for directory in [*models_dirs(), *extra_dirs]:
        path = directory / remote.name
        if path.exists():
            _check_complete(remote, path)
            return path
    if remote.hub_id:
        cached = _hub_cache(remote.hub_id)
        if cached is not None:
            return cached
    raise UsageError(missing_message(remote, preset))


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _check_complete(remote: RemoteFile, path: Path) -> None:
    if remote.hub_id and path.is_dir():
        return  # the adapter names what a directory lacks (two layouts are accepted)
    if remote.hub_id or path.is_dir():
        raise UsageError(f"{path} should be a {'directory' if remote.hub_id else 'file'}")


def _hub_cache(hub_id: str) -> Path | None:
    """A hub model already in the Hugging Face cache; never a network request."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the caller reports it missing
        return None


# a hub file that may be published in another format: diffusers reads either (the older
# google/ddpm-* repositories hold only the .bin)
HUB_ALTERNATIVES = {"diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin"}


class NotPublished(UsageError):
    """The server has no such file (HTTP 404)."""


def download(remotes: list[RemoteFile], directory: Path | None = None,
             timeout: float = 60.0) -> list[Path]:
    """Fetch each file (or hub model's files) that is not already in ``directory`` (default:
    the first models directory). A failed fetch is one UsageError line; a partial file never
    stays behind. A hub model's ``.safetensors`` weights that the repository does not publish
    are fetched as its ``.bin`` instead (``HUB_ALTERNATIVES``)."""
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout}")
    directory = directory or models_dirs()[0]
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file: downloads need a directory (--dir)")
    done = []
    for remote in remotes:
        target = directory / remote.name
        if remote.hub_id:
            for name in remote.files:
                alternative = HUB_ALTERNATIVES.get(name)
                if alternative and (target / alternative).exists():
                    name = alternative  # fetched as the alternative before
                try:
                    _fetch(f"{remote.url}/resolve/main/{name}", target / name, timeout)
                except NotPublished:
                    if not alternative or name == alternative:
                        raise
                    print(f"{remote.hub_id} has no {name}: fetching {alternative}", flush=True)
                    _fetch(f"{remote.url}/resolve/main/{alternative}", target / alternative,
                           timeout)
        else:
            _fetch(remote.url, target, timeout)
        done.append(target)
    return done


def _fetch(url: str, target: Path, timeout: float) -> None:
    if target.exists():
        print(f"have {target}", flush=True)
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only, or a file where a directory should be
        raise UsageError(f"cannot create {target.parent}: {err.strerror or err}") from None
    partial = target.with_name(target.name + ".part")
    print(f"downloading {url} -> {target}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        # HTTP 404, or (file:// URLs, the tests) no such file: the file is not published
        absent = (isinstance(err, urllib.error.HTTPError) and err.code == 404) \
            or isinstance(reason, FileNotFoundError)
        raise (NotPublished if absent else UsageError)(
            f"cannot download {url}: {reason}") from None
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        print(f"\ninterrupted; {partial} removed", file=sys.stderr)
        raise
    partial.rename(target)


# what torch says while reading a checkpoint that loads fine: clean-fid's Inception is a
# TorchScript file (torch.jit.load is how it is read, deprecated or not), and a .bin written with
# another pickle protocol than 2 is read by the same restricted unpickler all the same
LOADING_NOISE = ((FutureWarning, r"`torch\.jit\.load` is deprecated"),
                 (UserWarning, r"Detected pickle protocol \d+ in the checkpoint"))


@contextlib.contextmanager
def quiet_loading():
    """Around a checkpoint load: torch's warnings that say nothing to the user (``LOADING_NOISE``)
    are not shown; any other warning is."""
    with warnings.catch_warnings():
        for category, message in LOADING_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
