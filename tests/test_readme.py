"""README's shell commands, run as a new user runs them.

Every line of every ```sh block in README.md either runs here, in order, in a scratch folder
that holds the project's Makefile and venv (so ``make demo`` then ``make best`` read the same
``studies/autodiff.db``), or is listed in ``NOT_RUN`` with the reason, or sits in a block
README marks ``<!-- not run here: ... -->`` (a real model's files, the internet, a GPU). The
studies run small: ``ARGS`` (which the Makefile appends to every study's flags) shrinks them,
so ``make study`` is the same command at a few seconds' size. The README's example output is
checked against the lines ``make study`` prints, numbers aside.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import CEILING

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- not run here: (?P<why>[^>]*)-->\n)?```sh\n(?P<body>.*?)```", re.S)
# lines of runnable blocks that are not run, and why
NOT_RUN = {
    "make test": "it is this test suite",
    "make test-fast": "part of this test suite",
    "make dashboard": "a server; tests/test_report.py starts optuna-dashboard and reads its pages",
    "jupyter notebook": "a browser front end; tests/test_report.py executes the notebook as "
                        "Jupyter does",
    "jupyter nbconvert": "tests/test_report.py executes the same notebook and checks "
                         "nbconvert's HTML of it",
    "postgresql+psycopg://u:p@host": "an example server; tests/test_resilience.py runs workers "
                                     "on PostgreSQL when .ci/run provides one",
    "make train-digits": "up to 93 minutes of training; tests/test_skipping.py runs its "
                         "training steps small",
}
SMALL = "--trials 8 --stage2-trials 4 --samples 150 --population 4 --min-samples 0"


def commands(body: str) -> list[str]:
    """A block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def runnable() -> list[str]:
    run = []
    for block in BLOCK.finditer(README):
        if block["why"] is None:
            run += [c for c in commands(block["body"]) if not_run_reason(c) is None]
    return run


def not_run_reason(command: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in command), None)


def test_every_python_block_is_run_by_a_test():
    """Each is tagged ``# readme-example: NAME``; a test runs it by that name (own-objective:
    test_sampler_contract, apply: test_apply, use-schedule: below)."""
    blocks = re.findall(r"```python\n(.*?)\n", README)
    assert blocks and all(first.startswith("# readme-example: ") for first in blocks)
    names = {first.split(": ", 1)[1] for first in blocks}
    assert names == {"own-objective", "apply", "use-schedule"}


def test_every_block_runs_here_or_says_why():
    blocks = list(BLOCK.finditer(README))
    assert len(blocks) >= 6
    for block in blocks:
        assert block["why"] is None or block["why"].strip(), block["body"]
    run = runnable()
    assert "make demo" in run and "make study" in run
    # a synopsis with [OPTIONS] is not a command: README keeps those in marked blocks
    assert not [c for c in run if "[" in c]


@pytest.fixture
def scratch(tmp_path):
    """A folder laid out like the repository for what the commands read: the Makefile and the
    venv; the studies and reports they write stay here. ``make`` is the system's
    with ``-o .venv/.installed``: the project's venv is taken as installed, never rebuilt from
    here (nor are the requirements there to rebuild it from), also in a nested ``$(MAKE)``."""
    for name in ("Makefile", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    wrapper = tmp_path / "bin" / "make"
    wrapper.parent.mkdir()
    # exec -a: $(MAKE) in a recipe is this wrapper again, so the -o reaches nested makes
    wrapper.write_text(f'#!/bin/bash\nexec -a "$0" {shutil.which("make")} -o .venv/.installed '
                       '"$@"\n')
    wrapper.chmod(0o755)
    return tmp_path


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(cwd / "bin"), str(ROOT / ".venv" / "bin"), os.environ["PATH"]])
    env = {**os.environ, "ARGS": SMALL, "PATH": path}
    env.pop("MAKEFLAGS", None)  # pytest run by `make test`: not that make's flags
    env.pop("MAKELEVEL", None)
    # its own process group: make's and python's processes under bash end with the command,
    # also when it fails or runs past the ceiling (subprocess.run would kill bash alone)
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CEILING)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.readme  # a dozen processes' start-ups: `make test-readme`, after `make test` in CI
def test_readme_commands_run_on_the_cpu(scratch):
    outputs = {}
    for command in runnable():
        proc = run(command, scratch)
        if "--max-gflops" in command and proc.returncode == 2:
            # a small study's front may not reach README's budget: refused in one line
            assert proc.stderr.startswith(("error: no candidate", "error: every candidate")) \
                and len(proc.stderr.splitlines()) == 1, proc.stderr
            continue
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        outputs.setdefault(command, proc.stdout)
    # README's Python use of the schedule `make export` wrote, where it wrote it
    example = re.search(r"```python\n(# readme-example: use-schedule\n.*?)```", README, re.S)
    proc = run(f"python - <<'EOF'\n{example.group(1)}EOF", scratch)
    assert proc.returncode == 0, proc.stderr[-4000:]
    exported = json.loads((scratch / "schedule.json").read_text())
    assert str(exported["timesteps"]) in proc.stdout  # print(schedule.timesteps, ...)
    assert (scratch / "reports" / "digits-k4-quick" / "index.html").is_file()  # make demo
    assert (scratch / "reports" / "digits-k4" / "index.html").is_file()  # make report
    assert (scratch / "samples.png").read_bytes()[:4] == b"\x89PNG"
    # make evaluate: the exported schedule beside uniform and the best of every fixed sampler
    assert "fixed samplers (every standard spacing" in outputs["make evaluate"]
    check_example_output(outputs["make study"])


def shape(line: str) -> str:
    """A line with its numbers and lists of numbers as placeholders (a share's padding aside),
    and without what a small study need not print: trials stopped early (it may stop none),
    front points worse than the uniform schedule (it may find none), layer skips of a stage-2
    point (its best may be stage 1's), a point's confirmation or expected FID (which points
    rank among the few confirmed differs, and so whether the uniform one is best)."""
    line = re.sub(r"\[[\d, ]*\]", "[...]", line)
    line = re.sub(r"\s+", " ", re.sub(r"\d+(\.\d+)?", "N", line))
    line = line.replace("( N%)", "(N%)")  # a share padded to its width: ( 97.3%), (100.0%)
    line = line.replace("stopped at N images, FID there N", "FID N best N")
    line = re.sub(r"N (stopped early \(multi-fidelity\)|redundant), ", "", line)
    line = re.sub(r", N layer-steps? skipped", "", line)  # a stage-1 point skips none
    line = line.replace("front N point;", "front N points;")  # its front may be one point
    line = line.replace(" ± N confirmed (search N)", "")
    # the uniform baseline's FID once confirmed (the best, where it is the lowest)
    line = line.replace(" (the mean of confirmed N ± N and search N)", "")
    line = line.replace(" the mean of search and confirmed", "")
    line = line.replace(" expected (search N, not confirmed)", "")
    line = line.replace(" expected, worse than uniform", "").replace(") expected", ")")
    return line.replace(" worse than uniform", "").strip()


def check_example_output(printed: str):
    """README's example of `make study`'s output: each of its lines (``...`` elides) has the
    shape of a line the real command printed."""
    example = re.search(r"```text\n(study 'digits-k4'.*?)```", README, re.S).group(1)
    shapes = {shape(line) for line in printed.splitlines()}
    for line in example.splitlines():
        if line.strip() and line.strip() != "...":
            assert shape(line) in shapes, f"README example line not printed: {line}"
