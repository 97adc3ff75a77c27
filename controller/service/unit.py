"""The systemd unit `ftctl service-unit` prints, and what it would hide.

The unit is hardened: `ProtectHome=yes` makes /home, /root and /run/user
invisible to the service, and `PrivateTmp=yes` gives it its own /tmp and
/var/tmp. An ftctl installed in a home directory (a virtualenv there, a
checkout installed in editable mode, or an interpreter from pyenv under
/root) or a config kept there starts fine by hand and fails under systemd;
`service-unit` and `doctor` say so before that happens.
"""

from __future__ import annotations

import sys
from pathlib import Path

# what the unit's ProtectHome= and PrivateTmp= hide from the service
HIDDEN = {Path("/home"): "ProtectHome=", Path("/root"): "ProtectHome=", Path("/run/user"): "ProtectHome=",
          Path("/tmp"): "PrivateTmp=", Path("/var/tmp"): "PrivateTmp="}


def executable() -> Path:
    """What ExecStart= runs: this interpreter's `ftctl` script."""
    script = Path(sys.executable).parent / "ftctl"
    return script if script.exists() else Path(sys.executable)


def unit_text(config_path: Path, watchdog: str) -> str:
    from importlib import resources

    script = Path(sys.executable).parent / "ftctl"
    exec_start = str(script) if script.exists() else f"{sys.executable} -m ftctl"
    template = (resources.files("ftctl.controller.service") / "systemd" / "ftctl.service").read_text(encoding="utf-8")
    return (template.replace("{exec_start}", exec_start).replace("{config}", str(config_path))
            .replace("{watchdog}", watchdog))


def installed_paths(config_path: Path) -> dict[str, Path]:
    """What the service needs to see: its executable, the interpreter behind
    it, ftctl's own code, and the config."""
    import ftctl

    return {"the ftctl executable": executable(), "its Python interpreter": Path(sys.executable).resolve(),
            "ftctl's code": Path(ftctl.__file__).resolve().parent, "the config": config_path}


def hidden_paths(paths: dict[str, Path]) -> list[str]:
    """One line for each path the unit's sandbox hides from the service."""
    out = []
    for what, path in paths.items():
        path = Path(path).absolute()
        for root, setting in HIDDEN.items():
            if path == root or root in path.parents:
                fix = {"the config": "keep it in /etc/ftctl/controller.toml",
                       "its Python interpreter": "make the virtualenv with a Python outside it, e.g. "
                                                 "/usr/bin/python3 -m venv /opt/ftctl"}.get(
                    what, "install ftctl outside it: python3 -m venv /opt/ftctl && /opt/ftctl/bin/pip install .")
                out.append(f"{what} {path} lies under {root}, which the unit's {setting}yes hides from the "
                           f"service: {fix}")
                break
    return out
