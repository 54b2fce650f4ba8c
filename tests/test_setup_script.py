"""scripts/setup.sh checks what it needs from the system before any download and says which torch
build it will install (`--check`: only that; the whole set-up runs in every `make test`)."""

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
    "grep",
    "tr",
    "mktemp",
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


def _setup(
    tmp: Path, missing: set[str], gpu: bool = False, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": _path_without(tmp, missing),
        "HOME": str(tmp),
        "SLM_HOME": str(tmp / "home"),
        **extra,
    }
    if gpu:  # an nvidia-smi that lists one GPU, as the driver's does
        fake = tmp / "bin" / "nvidia-smi"
        fake.write_text("#!/usr/bin/env bash\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        fake.chmod(0o755)
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


def _torch_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("[setup] torch:"))


def test_a_machine_without_a_gpu_gets_the_cpu_build_by_its_local_version(tmp_path: Path) -> None:
    line = _torch_line(_setup(tmp_path, set()))
    wanted = "torch==2.13.0+cpu" if sys.platform.startswith("linux") else "torch==2.13.0"
    assert line.startswith(f"[setup] torch: {wanted}, the CPU build (no NVIDIA GPU found")


def test_a_listed_gpu_gets_the_cuda_build_and_slm_torch_overrides_it(tmp_path: Path) -> None:
    line = _torch_line(_setup(tmp_path, set(), gpu=True))
    assert line == (
        "[setup] torch: torch==2.13.0, the CUDA build "
        "(nvidia-smi lists a GPU; SLM_TORCH=cpu for the CPU build)"
    )
    (tmp_path / "again").mkdir()
    line = _torch_line(_setup(tmp_path / "again", set(), gpu=True, SLM_TORCH="cpu"))
    assert "the CPU build (SLM_TORCH=cpu)" in line


def test_an_unknown_torch_build_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _setup(tmp_path, set(), SLM_TORCH="rocm")
    assert result.returncode == 2
    assert result.stderr.strip() == "[setup] SLM_TORCH=rocm: expected auto, cpu or cuda"


def test_a_cpu_build_on_no_index_names_slm_torch_index(tmp_path: Path) -> None:
    """The whole set-up in a copy of the script, with pip allowed no index and no wheel folder:
    it stops at the torch step in one line naming the setting that fixes it."""
    if not sys.platform.startswith("linux"):
        return  # the `+cpu` local version exists on Linux only
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "repo" / "scripts" / "setup.sh")
    (tmp_path / "empty").mkdir()
    env = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,  # none of this machine's configured indexes or wheels
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "empty"),
        "SLM_HOME": str(tmp_path / "home"),
        "SLM_TORCH": "cpu",
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        ["bash", str(tmp_path / "repo" / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("[setup] torch==2.13.0+cpu is on none of pip's indexes: set SLM_TORCH_INDEX to")
    )
    assert not list((tmp_path / "repo" / ".venv").glob("lib/python*/site-packages/torch"))
