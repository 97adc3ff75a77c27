"""The house rules of the code's layout: one ftctl namespace, rooms that do
not lean on each other the wrong way, modules that stay readable."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib

from tests.conftest import REPO

ROOMS = ("controller", "models", "providers")
SDKS = ("mistralai", "openai", "together", "mistral_common", "bpe_openai")


def _modules(room: str):
    return sorted(p for p in (REPO / room).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_folder_is_installed_under_ftctl():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapping = setuptools["package-dir"]
    assert mapping == {"ftctl": "controller/api", "ftctl.controller": "controller", "ftctl.models": "models",
                       "ftctl.providers": "providers"}
    found = set()
    for room in ROOMS:
        for init in (REPO / room).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO).as_posix()
            found.add("ftctl" if rel == "controller/api" else "ftctl." + rel.replace("/", "."))
    assert found == listed
    assert all(name == "ftctl" or name.startswith("ftctl.") for name in listed)


def test_the_checkout_is_not_importable_by_its_folder_names():
    p = subprocess.run([sys.executable, "-c", "import importlib.util as u; print([n for n in "
                        "('controller', 'models', 'providers') if u.find_spec(n)])"],
                       capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-c", "import ftctl; print(ftctl.__version__, ftctl.open.__module__)"],
                       capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert p.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+ ftctl\.core", p.stdout.strip()), p.stderr


def test_providers_never_import_the_controller():
    pattern = re.compile(r"^\s*(from|import)\s+(ftctl\.)?controller\b", re.M)
    offenders = [p.relative_to(REPO).as_posix() for p in _modules("providers") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_sdk_or_tokenizer_package_is_imported_under_the_controller():
    pattern = re.compile(rf"^\s*(from|import)\s+({'|'.join(SDKS)})\b", re.M)
    offenders = [p.relative_to(REPO).as_posix() for p in _modules("controller") if pattern.search(p.read_text())]
    assert offenders == []


def test_models_import_neither_the_controller_nor_the_providers():
    pattern = re.compile(r"^\s*(from|import)\s+(ftctl\.)?(controller|providers)\b", re.M)
    offenders = [p.relative_to(REPO).as_posix() for p in _modules("models") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_module_is_much_over_400_lines():
    long = {p.relative_to(REPO).as_posix(): n for room in ROOMS for p in _modules(room)
            if (n := len(p.read_text().splitlines())) > 440}
    assert long == {}


def test_the_cli_command_modules_do_not_import_each_other():
    # one app module that the commands register on: no import circle
    cli = REPO / "controller" / "cli"
    modules = ("jobs", "observe", "preflight", "service")
    for module in modules:
        text = (cli / f"{module}.py").read_text()
        others = [m for m in modules if m != module]
        assert not re.search(rf"ftctl\.controller\.cli\.({'|'.join(others)})\b", text), module
