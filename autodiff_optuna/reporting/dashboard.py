"""``dashboard``: optuna-dashboard on a study database, with the artifact store the report
attaches sample grids to (``storage.artifacts_dir``: the same rule both ways), and the note it
shows on a study's page: the study's result, as ``best`` gives it."""

import ipaddress
import socket
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from autodiff_optuna.errors import UsageError, one_line
from autodiff_optuna.reporting.artifacts import writable_folder
from autodiff_optuna.reporting.text import set_aside_text
from autodiff_optuna.storage import DEFAULT_STORAGE, artifacts_dir, open_storage

HOST = "127.0.0.1"  # the dashboard can edit studies: loopback unless the user says otherwise


def serve(url: str | None, artifacts: str | None, port: int, host: str = HOST) -> None:
    """optuna-dashboard (its WSGI app) served from this process until Ctrl-C, which stops it
    like any command: exit code 130, no traceback (optuna-dashboard's own command prints one).
    A bad port, host or database, or a port in use, is refused in one line first."""
    from optuna.artifacts import FileSystemArtifactStore

    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError("optuna-dashboard is not installed (pip install -r requirements.txt)") \
            from None
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be in [1, 65535], got {port}")
    _check_host(host)
    url = url or DEFAULT_STORAGE
    open_storage(url)  # one-line errors, and the tables exist before the dashboard looks
    directory = writable_folder(artifacts_dir(url, artifacts), "--artifacts")
    if not ipaddress.ip_address(host).is_loopback:
        print(f"warning: --host {host} lets anyone who can reach this machine edit and delete "
              "the studies", file=sys.stderr)
    app = optuna_dashboard.wsgi(url, artifact_store=FileSystemArtifactStore(str(directory)))
    with _listen(host, port, app) as server:
        shown = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
        print(f"optuna-dashboard on http://{shown}:{port}/ (artifacts in {directory}); Ctrl-C "
              "stops it", file=sys.stderr, flush=True)
        server.serve_forever()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request still open does not keep Ctrl-C from ending the process


def _listen(host: str, port: int, app) -> WSGIServer:
    """The server bound to ``host:port`` (IPv4 or IPv6); a port in use is one line."""
    server_class = type("Server", (_Server,), {
        "address_family": socket.AF_INET6 if ipaddress.ip_address(host).version == 6
        else socket.AF_INET})
    try:
        return make_server(host, port, app, server_class=server_class)
    except OSError as err:
        raise UsageError(f"cannot listen on {host} port {port}: {err.strerror or err}") \
            from None


def _check_host(host: str) -> None:
    """An IP address: a host name would be resolved by the server, and a typo fail there."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--host must be an IP address (127.0.0.1, 0.0.0.0, ::1), got "
                         f"{host!r}") from None


def keep_result(result) -> None:
    """Keep the result in the studies (``results.store_result``) and as optuna-dashboard's note
    on them, so the dashboard shows the same answer as ``best``. A failure here costs the
    dashboard its note, not the search its result (printed before): one warning line."""
    from autodiff_optuna.search.results import store_result

    try:
        store_result(result)
        write_note(result)
    except Exception as err:  # noqa: BLE001 - any failure: the search itself is done
        print(f"warning: the result was not stored in the studies ({one_line(err)}); `best` "
              "computes it again", file=sys.stderr)


def write_note(result) -> None:
    """optuna-dashboard's note on both studies of a search (Markdown on the study's page): the
    result, so that the dashboard says what ``best`` says."""
    from optuna_dashboard import save_note

    body = note(result)
    for study in filter(None, (result.stage1, result.stage2)):
        save_note(study, body)


def note(result) -> str:
    full = result.full_gflops

    def line(label: str, point) -> str:
        return f"- **{label}**: {_md(point.describe(full))}"

    lines = [f"## Result of {_md(result.name)}", "",
             "Computed by autodiff-optuna over both stages (as `best` prints it); each trial "
             "below is named by stage and number.", ""]
    if result.uniform is not None:
        lines.append(line("uniform", result.uniform))
    exported, rule = result.exported()
    lines.append(line("best", result.best))
    if result.set_aside:
        lines.append(f"- **set aside**: {_md(set_aside_text(result))}")
    lines.append(line(f"export ({rule})", exported) if exported is not None else
                 f"- **export**: none: {_md(rule)}")
    lines.append("")
    if full:
        lines += [f"Pareto front (each point saves at least {result.min_saving:.1%} of the "
                  f"full network's {full:.4f} GFLOPs/image over the next):", "",
                  "| stage | trial | GFLOPs/image | of full | FID | layer-steps skipped |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p.stage} | {p.trial} | {p.gflops:.4f} | {p.share(full):.1%} | "
                  f"{p.fid:.3f} | {p.skipped} |" for p in result.front]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Stored text (a study name, time steps) as literal Markdown: its markup characters
    escaped, so a name cannot add links or HTML to the note."""
    return "".join("\\" + c if c in "\\`*_{}[]()<>#+-.!|" else c for c in text)
