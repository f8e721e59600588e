"""What a newcomer types first: the bare command, a probe of a wrong port, the install, the
README's word on tests that need files from outside the clone."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO, free_port


def bess_edge(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``bess-edge`` command, as a user runs it."""
    script = Path(sys.executable).with_name("bess-edge")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bess_edge"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def test_bare_command_prints_the_help_with_every_subcommand():
    result = bess_edge()
    assert result.returncode == 2  # still a usage error, but one that shows what to type
    assert "usage: bess-edge" in result.stdout
    for command in ("run", "status", "export", "check-config", "subscribe", "probe"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
    assert "required" not in result.stderr


def test_probe_of_a_closed_port_says_it_once_in_our_words():
    port = free_port()  # nothing listens there
    result = bess_edge("probe", "modbus", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == [f"bess-edge probe: tcp://127.0.0.1:{port} unit 1: "
                     f"cannot connect to tcp://127.0.0.1:{port}"]  # fmt: skip
    assert "Failed to connect" not in result.stdout


def test_pyproject_has_an_spdx_licence_and_lists_every_package_directory():
    """setuptools warns at install about a TOML-table licence (deprecated) and about any
    importable directory missing from ``packages`` (bess_edge/schemas was)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    dirs = project["tool"]["setuptools"]["package-dir"]
    listed = set(project["tool"]["setuptools"]["packages"])
    for package, where in dirs.items():
        root = REPO / where
        for sub in root.rglob("*"):
            if sub.is_dir() and sub.name != "__pycache__" and any(sub.glob("*.*")):
                name = ".".join([package, *sub.relative_to(root).parts])
                assert name in listed, f"{sub} is not in [tool.setuptools] packages"


def test_readme_names_every_test_that_needs_the_third_party_files():
    readme = (REPO / "README.md").read_text()
    assert "../shared/thirdparty/foxbms/" in readme
    for test in sorted((REPO / "tests").glob("test_*.py")):
        text = test.read_text()
        needs_it = "thirdparty" in text or "FOXBMS" in text
        if needs_it and "skip" in text and test.name != Path(__file__).name:
            assert f"tests/{test.name}" in readme, test.name
