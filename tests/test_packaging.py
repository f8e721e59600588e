"""An installed gateway must carry every file the source tree has: a folder missing from
pyproject's package list is left out of the wheel (setuptools only warns), and the device then
runs without its dashboard, schemas or register maps."""

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools reads `package` from, following the package-dir mapping."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:cut]))
        if mapped is not None:
            return ROOT.joinpath(mapped, *parts[cut:])
    return ROOT.joinpath(*parts)


def _shipped_dirs(config: dict) -> dict[Path, str]:
    return {_source_dir(pkg, config["package-dir"]).resolve(): pkg for pkg in config["packages"]}


def test_every_source_folder_with_files_is_a_listed_package() -> None:
    config = _setuptools_config()
    shipped = _shipped_dirs(config)
    for top in {Path(p).parts[0] for p in config["package-dir"].values()}:
        for folder in (ROOT / top).rglob("*"):
            if not folder.is_dir() or "__pycache__" in folder.parts:
                continue
            if any(f.is_file() for f in folder.iterdir()):
                assert folder.resolve() in shipped, (
                    f"{folder.relative_to(ROOT)} holds files but is not in pyproject's packages"
                )


def test_every_data_file_of_a_package_is_matched_by_package_data() -> None:
    config = _setuptools_config()
    patterns = config["package-data"]
    for folder, pkg in _shipped_dirs(config).items():
        for f in folder.iterdir():
            if f.is_dir() or f.suffix in (".py", ".pyc"):
                continue
            globs = patterns.get(pkg, []) + patterns.get("*", [])
            assert any(fnmatch.fnmatch(f.name, g) for g in globs), (
                f"{f.relative_to(ROOT)} would be left out of the wheel: no package-data for {pkg}"
            )
