"""``bess-edge install-systemd``: the units, the service user, /etc/bess-edge and its config.

The daemon's unit and, unless ``--no-api``, the API's (a process of its own, docs/api.md).
Safe to run again on an upgrade: the units are replaced (they belong to bess-edge), the site's
config is never overwritten, only its mode is tightened when a secret in it is readable by
everyone.
``--prefix`` installs into a staging root (a package build, an SD-card image, a test): paths
inside the files stay the target's, and nothing is done to this machine's users or systemd.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bess_edge.cli._common import EXIT_FAILURE, EXIT_OK
from bess_edge.config import DEFAULT_CONFIG_PATH
from bess_edge.resources import data_dir

UNIT_NAME = "bess-edge.service"
API_UNIT_NAME = "bess-edge-api.service"
SERVICE_USER = "bess-edge"
DEFAULT_EXEC = "/opt/bess-edge/venv/bin/bess-edge"
UNIT_MODE = 0o644
CONFIG_MODE = 0o640  # root:bess-edge: the service reads it, other local users do not


@dataclass
class Step:
    what: str
    do: Callable[[], None]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "install-systemd",
        help="install the systemd units, the service user and /etc/bess-edge",
        description="Install /etc/systemd/system/bess-edge.service and bess-edge-api.service "
        "(ExecStart pointing at this installation's bess-edge), create the 'bess-edge' system "
        "user (in group dialout, for serial ports), create /etc/bess-edge with a commented "
        "config (mode 0640, group bess-edge) unless one exists, and reload systemd. Run as "
        "root. Then: systemctl enable --now bess-edge bess-edge-api. See docs/install.md.",
    )
    parser.add_argument(
        "--prefix",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="install under this root instead of / (staging: no user is created, systemd is "
        "not reloaded)",
    )
    parser.add_argument(
        "--exec",
        dest="exec_path",
        metavar="PATH",
        help="the bess-edge executable the unit runs (default: the one running this command; "
        f"with --prefix, {DEFAULT_EXEC})",
    )
    parser.add_argument(
        "--no-api",
        dest="api",
        action="store_false",
        help=f"do not install {API_UNIT_NAME} (the REST API and dashboard)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be done, change nothing"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    staging = args.prefix.resolve() != Path("/")
    if not staging and not args.dry_run and os.geteuid() != 0:
        print("install-systemd: run as root (or use --prefix DIR / --dry-run)", file=sys.stderr)
        return EXIT_FAILURE
    # A staged tree is for another machine: its venv is the documented one, not ours.
    exec_path = args.exec_path or (DEFAULT_EXEC if staging else current_executable())
    units = (UNIT_NAME, API_UNIT_NAME) if args.api else (UNIT_NAME,)
    steps = plan(args.prefix, exec_path, staging, units)
    for step in steps:
        print(("would " if args.dry_run else "") + step.what)
        if not args.dry_run:
            step.do()
    if not args.dry_run:
        print(next_steps(staging, units))
    return EXIT_OK


def current_executable() -> str:
    """This installation's ``bess-edge`` script: the venv the command runs from."""
    beside = Path(sys.executable).parent / "bess-edge"
    if beside.exists():
        return str(beside)
    return shutil.which("bess-edge") or DEFAULT_EXEC


def unit_text(name: str, exec_path: str) -> str:
    """The shipped unit ``name`` with ExecStart= pointing at ``exec_path``."""
    text = (data_dir("systemd") / name).read_text(encoding="utf-8")
    if DEFAULT_EXEC not in text:
        raise RuntimeError(f"shipped {name} has no {DEFAULT_EXEC} to replace")
    return text.replace(DEFAULT_EXEC, exec_path)


def plan(prefix: Path, exec_path: str, staging: bool, units: tuple[str, ...]) -> list[Step]:
    """Every change, in order, each with the line that describes it."""
    config = prefix / DEFAULT_CONFIG_PATH.relative_to("/")
    steps = []
    if not staging and not _user_exists(SERVICE_USER):
        command = [
            "useradd", "--system", "--user-group", "--groups", "dialout",
            "--home-dir", "/var/lib/bess-edge", "--no-create-home",
            "--shell", "/usr/sbin/nologin", SERVICE_USER,
        ]  # fmt: skip
        steps.append(Step(f"run {' '.join(command)}", lambda: _check(command)))
    for name in units:
        unit, text = prefix / "etc/systemd/system" / name, unit_text(name, exec_path)
        steps.append(
            Step(
                f"write {unit} (mode {UNIT_MODE:o})",
                functools.partial(_write, unit, text, UNIT_MODE),
            )
        )
    steps.append(
        Step(
            f"create {config.parent} (mode 755)",
            lambda: config.parent.mkdir(mode=0o755, parents=True, exist_ok=True),
        )
    )
    if config.exists():
        if config.stat().st_mode & stat.S_IROTH:
            steps.append(
                Step(
                    f"keep {config}; make it unreadable by other users (mode {CONFIG_MODE:o})",
                    lambda: config.chmod(CONFIG_MODE),
                )
            )
        else:
            steps.append(Step(f"keep {config} (never overwritten)", lambda: None))
    else:
        shipped = (data_dir("config") / "bess-edge.toml").read_text(encoding="utf-8")
        steps.append(
            Step(
                f"write {config} (commented example; mode {CONFIG_MODE:o}, group {SERVICE_USER})",
                lambda: _write(config, shipped, CONFIG_MODE, group=SERVICE_USER),
            )
        )
    if not staging and Path("/run/systemd/system").is_dir():
        steps.append(
            Step("run systemctl daemon-reload", lambda: _check(["systemctl", "daemon-reload"]))
        )
    return steps


def next_steps(staging: bool, units: tuple[str, ...]) -> str:
    services = " ".join(name.removesuffix(".service") for name in units)
    if staging:
        return (
            f"staged. On the target: useradd --system --user-group --groups dialout "
            f"--no-create-home --shell /usr/sbin/nologin {SERVICE_USER}; "
            f"chgrp {SERVICE_USER} {DEFAULT_CONFIG_PATH}; systemctl daemon-reload"
        )
    return (
        f"next: edit {DEFAULT_CONFIG_PATH}, check it with `bess-edge check-config`, then "
        f"`systemctl enable --now {services}` and `journalctl -u bess-edge -f`"
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _write(path: Path, text: str, mode: int, group: str | None = None) -> None:
    """Write ``path`` atomically with ``mode`` (and ``group`` when that group exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    if group is not None and os.geteuid() == 0:
        # A staged install may lack the group: it is made on the target (see next_steps).
        with contextlib.suppress(KeyError):
            os.chown(tmp, 0, grp.getgrnam(group).gr_gid)
    tmp.replace(path)


def _check(command: list[str]) -> None:
    subprocess.run(command, check=True)
