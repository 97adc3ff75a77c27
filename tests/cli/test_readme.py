"""The README's examples, run as written (issue 18.3): every ```python block,
and every ```sh block that is cheap and self-contained; each other ```sh
block is named below with why it is not run, so a new one cannot slip by.

They run as a new user runs them from a checkout: in a folder that holds a
copy of the shipped controller.toml and of controller/demo/data (so the
checkout itself is never written to), with `ftctl` on PATH and a real daemon
driving the database. The one change made to a block: `/tmp/` becomes this
test's own temporary folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon, ftctl_env

README = (REPO / "README.md").read_text()
PYTHON = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
SHELL = re.findall(r"^```sh\n(.*?)^```", README, re.S | re.M)

# the ```sh blocks run, by their first line, in this order (after the Python)
RUN = ("ftctl status -o wide", "ftctl validate controller/demo/data/qa.jsonl")
# the others, by their first line, and why they are not run here
NOT_RUN = {
    "# 1. install and run the embedded default": "installs the package and runs the whole suite",
    "ftctl submit --all": "a synopsis: FILE placeholders, `a | b` alternatives and a daemon that runs until stopped",
    "ftctl emulator --kind mistral": "starts a server in the background on a fixed port (tests/providers run it)",
    "curl -X POST localhost:8089": "needs that emulator on port 8089",
    "#!/bin/sh": "a hook script, not commands to run (tests/service/test_hooks.py runs hooks)",
    "sudo /usr/bin/python3 -m venv /opt/ftctl": "installs a system service as root",
    ".venv/bin/python benchmarks/scale.py": "a benchmark that runs for minutes",
    ".venv/bin/pytest": "the test suite itself",
}


def _first(block: str) -> str:
    return block.strip().splitlines()[0]


def test_every_shell_block_is_run_or_says_why_not():
    firsts = [_first(b) for b in SHELL]
    for first in firsts:
        run = [r for r in RUN if first.startswith(r)]
        skipped = [k for k in NOT_RUN if first.startswith(k)]
        assert len(run) + len(skipped) == 1, f"README block {first!r}: add it to RUN or NOT_RUN (with why)"
    assert all(any(f.startswith(k) for f in firsts) for k in (*RUN, *NOT_RUN)), "a named block left the README"
    assert PYTHON, "the README has a Python example"


@pytest.fixture
def checkout(tmp_path) -> Path:
    """What the examples need of a checkout, copied: controller.toml and the demo data."""
    where = tmp_path / "checkout"
    (where / "controller" / "demo").mkdir(parents=True)
    shutil.copy(REPO / "controller.toml", where / "controller.toml")
    shutil.copytree(REPO / "controller" / "demo" / "data", where / "controller" / "demo" / "data")
    (tmp_path / "tmp").mkdir()
    return where


@pytest.mark.slow
def test_the_readmes_examples_run_as_written(checkout):
    env = {**ftctl_env(), "PATH": f"{Path(sys.executable).parent}:{ftctl_env().get('PATH', '')}"}
    tmp = checkout.parent / "tmp"
    daemon = Daemon(checkout / "controller.toml", env=env)
    try:
        for i, block in enumerate(PYTHON):
            p = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=checkout, env=env,
                               timeout=120)
            assert p.returncode == 0, f"README python block {i + 1}:\n{block}\n{p.stderr[-3000:]}"
        for first in RUN:
            (block,) = [b for b in SHELL if _first(b).startswith(first)]
            script = block.replace("/tmp/", f"{tmp}/")
            p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                               cwd=checkout, env=env, timeout=300)
            assert p.returncode == 0, f"README sh block {first!r}:\n{p.stderr[-3000:]}{p.stdout[-2000:]}"
            if first.startswith("ftctl validate"):
                assert p.stdout.count("OK") == 2 and "total (the higher)" in p.stdout
                assert f"wrote {tmp}/support-ready.jsonl" in p.stdout
            else:
                assert (checkout / "jobs.json").read_text().startswith("[")  # `> jobs.json`, in the cwd
    finally:
        daemon.kill()
    # what the Python example did is in the history: the gate overridden twice, the model qa's again
    import ftctl

    with ftctl.open(checkout / "controller.toml") as ft:
        job = ft.show(1)
        assert [(e["from"], e["to"], e["trigger"]) for e in job["events"]][-2:] == [
            ("promoted", "rejected", "reject"), ("rejected", "promoted", "promote")]
        assert job["promotion"] == "promoted" and list(ft.models()) == ["qa"]
