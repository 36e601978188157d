"""The wheel `pip install .` builds: the whole package and nothing else, the `ollamalite`
command, the version of `ollamalite.__version__`, the dependencies requirements/runtime.txt
pins; and, installed on its own, it runs from where it was installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ollamalite import __version__
from tests.conftest import REPO

PACKAGE = REPO / "ollamalite"


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built offline from a copy of the checkout (tests included, to show they stay out), so
    the build's own `build/` and `.egg-info` never land in the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "setup.cfg"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ollamalite", "tests"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", "-w", str(out), ".",
         cwd=source)
    [built] = out.glob("*.whl")
    return built


def _dist_info(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(f"ollamalite-{__version__}.dist-info/{name}").decode()


def test_the_wheel_holds_every_package_file_and_no_tests(wheel: Path) -> None:
    assert wheel.name == f"ollamalite-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = {name for name in names if not name.startswith(f"ollamalite-{__version__}.")}
    expected = {path.relative_to(REPO).as_posix() for path in PACKAGE.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    assert package == expected
    subpackages = {path.parent.relative_to(REPO).as_posix()
                   for path in PACKAGE.rglob("__init__.py")}
    assert {"ollamalite/server", "ollamalite/runtime/engine"} <= subpackages
    assert all(f"{sub}/__init__.py" in names for sub in subpackages)
    assert not any(name.startswith("tests/") for name in names)


def test_the_wheel_declares_the_command_version_and_pinned_dependencies(wheel: Path) -> None:
    entry_points = _dist_info(wheel, "entry_points.txt").split()
    assert entry_points == ["[console_scripts]", "ollamalite", "=", "ollamalite.cli:main"]
    metadata = _dist_info(wheel, "METADATA")
    assert f"\nVersion: {__version__}\n" in metadata
    required = re.findall(r"^Requires-Dist: ([^;\s]+)$", metadata, re.MULTILINE)
    runtime = (REPO / "requirements" / "runtime.txt").read_text().splitlines()
    assert "apispec==6.10.1" in required and "llama-cpp-python==0.3.36" in required
    assert set(required) <= set(runtime), set(required) - set(runtime)


def test_the_installed_wheel_runs_from_its_own_folder(wheel: Path, tmp_path: Path) -> None:
    """Installed without dependencies into a folder of its own, which the venv's python then
    puts first on its path: the dependencies come from the venv, ollamalite from the folder."""
    target = tmp_path / "target"
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(wheel), cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = _run(sys.executable, "-c", "import ollamalite; print(ollamalite.__file__)",
                 cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()) == target / "ollamalite" / "__init__.py"
    script = target / "bin" / "ollamalite"
    assert script.read_text().startswith(f"#!{sys.executable}")
    version = _run(str(script), "--version", cwd=tmp_path, env=env)
    assert version.stdout.splitlines()[0] == f"ollamalite {__version__}"
    assert version.stdout.splitlines()[1].startswith("llama-cpp-python ")
