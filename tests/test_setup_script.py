"""scripts/setup.sh checks what it needs from the system before any download (`--check`: only
that; the whole set-up runs in every `make test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = (
    "bash",
    "dirname",
    "date",
    "printf",
    "uname",
    "id",
    "cat",
    "sha256sum",
    "cut",
    "rm",
    "touch",
)


def _path_without(tmp: Path, missing: set[str]) -> str:
    """A PATH holding only the basic tools, a python3, and the build tools not in `missing`."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name in (*TOOLS, "cc", "c++", "cmake"):
        found = shutil.which(name)
        if found and name not in missing:
            (bin_dir / name).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


def _setup(tmp: Path, missing: set[str]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": _path_without(tmp, missing),
        "HOME": str(tmp),
        "SLM_HOME": str(tmp / "home"),
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**env, "LANG": os.environ.get("LANG", "C.UTF-8")},
        timeout=60,
        check=False,
    )


def test_missing_build_tools_are_named_with_the_command_that_installs_them(tmp_path: Path) -> None:
    result = _setup(tmp_path, {"cmake", "c++"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "[setup] missing: C++ compiler cmake"
    assert "apt-get install -y build-essential cmake" in lines[1]
    assert not (tmp_path / "home").exists()  # nothing downloaded or created


def test_present_tools_pass_the_check(tmp_path: Path) -> None:
    if not (shutil.which("cc") and shutil.which("c++") and shutil.which("cmake")):
        raise AssertionError("this machine lacks a compiler or cmake, which set-up needs")
    result = _setup(tmp_path, set())
    assert result.returncode == 0, result.stderr
    assert "[setup] prerequisites: compiler, cmake, python venv present" in result.stdout
    assert not (tmp_path / "home").exists()
