"""Every command's --help (issue 18.4): an Examples section whose examples
parse, boolean flags without a value placeholder, and every time option
taking durations (3s, 500ms, 2m) as well as plain seconds."""

from __future__ import annotations

import shlex

import pytest
import typer
from typer._click.core import Context  # typer ships its own click

from tests.conftest import run_ftctl_many


def _group():
    from ftctl.controller.cli import app

    return typer.main.get_command(app)


def test_every_help_has_examples_and_no_bool_placeholder():
    group = _group()
    names = sorted(group.commands)
    pages = run_ftctl_many(["--help"], *[[name, "--help"] for name in names])
    assert all(p.returncode == 0 for p in pages), [p.stderr for p in pages if p.returncode]
    for name, page in zip(["ftctl", *names], pages):
        assert "<bool>" not in page.stdout, f"{name} --help shows <bool> for a flag"
        assert "╭" not in page.stdout and "│" not in page.stdout, f"{name} --help is drawn in boxes"
        if name != "ftctl":
            section = page.stdout.split("Examples:\n", 1)
            assert len(section) == 2, f"{name} --help has no Examples section"
            lines = [line.strip() for line in section[1].splitlines() if line.strip()]
            assert lines and lines[0].startswith("# ") and lines[1].startswith("ftctl "), lines


def test_every_example_parses_as_its_command_says():
    from ftctl.controller.cli.examples import EXAMPLES

    group = _group()
    assert set(EXAMPLES) == set(group.commands)
    for name, examples in EXAMPLES.items():
        for _, example in examples:
            words = shlex.split(example.split(" | ")[0])
            assert words[0] == "ftctl"
            words = words[1:]
            while words[0].startswith("-"):  # the global options
                words = words[2:]
            assert words[0] == name, example
            command = group.commands[name]
            # parsing checks every option exists and every value converts (durations too)
            with command.make_context(name, [w for w in words[1:]], resilient_parsing=False) as ctx:
                assert ctx.params is not None


def _time_options():
    group = _group()
    for name, command in sorted(group.commands.items()):
        for param in command.params:
            if param.param_type_name == "option" and any(
                    word in opt for opt in param.opts for word in ("interval", "timeout", "-time", "watchdog")):
                yield name, command, param


def test_every_time_option_takes_durations():
    found = list(_time_options())
    assert {(n, p.opts[0]) for n, _, p in found} >= {("status", "--interval"), ("wait", "--timeout"),
                                                     ("wait", "--interval"), ("events", "--interval"),
                                                     ("logs", "--interval"), ("demo", "--train-time"),
                                                     ("emulator", "--queue-time"), ("service-unit", "--watchdog")}
    for name, command, param in found:
        assert param.metavar == "DURATION", (name, param.opts)
        ctx = Context(command)
        short = ("500ms", 0.5) if name != "service-unit" else ("1500ms", 1.5)  # a watchdog is 1 s at least
        for text, seconds in (("3s", 3.0), short, ("2m", 120.0), ("1.5", 1.5), ("3", 3.0), ("1m30s", 90.0)):
            assert param.process_value(ctx, text) == seconds, (name, param.opts, text)
        with pytest.raises(typer.BadParameter):
            param.process_value(ctx, "soon")


def test_a_bad_duration_is_one_line():
    (p,) = run_ftctl_many(["wait", "1", "--interval", "fast"])
    assert p.returncode == 2
    assert p.stderr.strip() == ("ftctl: error: Invalid value for '--interval': 'fast' is not a duration like '15s', "
                                "'30m' or '1h30m' (see `ftctl wait --help`)")
