"""What produced a result: the commit, the lock file the environment was
installed from, the versions that change numbers and the device, recorded beside every training
history, metrics file, report and tracked run, so two numbers are compared only when they came from
the same environment."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

#: Packages whose version can move a number (the sampler, the model code, the data handling).
PACKAGES = ("torch", "diffusers", "kedro", "numpy")
#: The pinned, hashed dependency list ``make setup`` installs from (``make lock`` writes it).
LOCK_FILE = "requirements.lock"


def environment_record(project_root: str | Path | None = None) -> dict[str, str]:
    """``{"commit", "lock", "torch", "diffusers", "kedro", "numpy", "device"}``, every value a string."""
    root = Path(project_root or Path.cwd())
    record = {"commit": git_commit(root), "lock": lock_digest(root)}
    record.update({name: _version(name) for name in PACKAGES})
    record["torch"] = torch.__version__  # with its build (+cpu, +cu130): the kernels that ran
    record["device"] = device_name()
    return record


def environment_line(record: dict[str, str]) -> str:
    """One line for a report: ``commit abc123 (torch 2.14.1, ...) on <device>``."""
    versions = ", ".join(f"{name} {record[name]}" for name in PACKAGES if name in record)
    lock = f", lock {record['lock']}" if "lock" in record else ""
    return (f"commit {record.get('commit', 'unknown')}{lock} ({versions}) "
            f"on {record.get('device', 'unknown device')}")


def lock_digest(root: str | Path) -> str:
    """The first 12 hex digits of ``requirements.lock``'s sha256 in ``root``
    (the versions every package was installed at), or ``none`` without one."""
    try:
        return hashlib.sha256((Path(root) / LOCK_FILE).read_bytes()).hexdigest()[:12]
    except OSError:
        return "none"


def git_commit(root: str | Path) -> str:
    """The checkout's commit, ``+changes`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = _git(root, "rev-parse", "--short=12", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if changed else "")


def _git(root: str | Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


@functools.cache
def device_name() -> str:
    """The GPU's name when CUDA is used, else the CPU's model name."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: the platform's own description below
    return platform.processor() or platform.machine() or "unknown CPU"
