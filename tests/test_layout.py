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


def _imports_of(room: str) -> dict[str, set[str]]:
    """Each module under controller/<room> and the ftctl.controller packages it imports, at any depth in the file."""
    pattern = re.compile(r"^\s*(?:(?:from|import)\s+ftctl\.controller\.([a-z_]+)"
                         r"|from\s+ftctl\.controller\s+import\s+\(?\s*([a-z_]+))", re.M)
    return {p.relative_to(REPO).as_posix(): {a or b for a, b in pattern.findall(p.read_text())}
            for p in sorted((REPO / "controller" / room).rglob("*.py"))}


def test_the_engine_and_the_preflight_stand_on_the_ledger_not_on_each_other():
    # what both need (job creation and its twin check, hashing, atomic writes,
    # pricing, states and reasons) is in controller/ledger, below both
    found = {room: _imports_of(room) for room in ("engine", "preflight", "ledger")}
    assert {m: s & {"preflight"} for m, s in found["engine"].items() if "preflight" in s} == {}
    assert {m: s & {"engine"} for m, s in found["preflight"].items() if "engine" in s} == {}
    above = {"engine", "preflight", "cli", "service", "demo", "records"}
    assert {m: s & above for m, s in found["ledger"].items() if s & above} == {}


def test_the_shared_record_shapes_are_owned_below_the_top_package():
    # cli, service and demo print the records; the top package (controller/api) only re-uses them
    assert not (REPO / "controller" / "api" / "records.py").exists()
    # (the version alone is read from the top package)
    pattern = re.compile(r"^\s*(?:from ftctl import (?!__version__$)|from ftctl\.(?:core|delivery|rehome)\b"
                         r"|import ftctl\.(?:core|delivery))", re.M)
    below = [p.relative_to(REPO).as_posix() for room in ("cli", "service", "demo", "engine", "preflight", "ledger")
             for p in (REPO / "controller" / room).rglob("*.py") if pattern.search(p.read_text())]
    assert below == []


def test_no_function_under_the_controller_defaults_to_a_provider_kind():
    # which provider a file is checked for is the caller's to say; facts about a kind live in providers/
    # (the command line's own documented defaults, like `ftctl demo --provider simulated`, aside)
    import ast

    from ftctl.providers.registry import KINDS

    found = []
    for p in _modules("controller"):
        if p.parent.name in ("cli", "demo"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for d in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                    if isinstance(d, ast.Constant) and d.value in KINDS:
                        found.append(f"{p.relative_to(REPO).as_posix()}:{node.lineno} {node.name}={d.value!r}")
    assert found == []
