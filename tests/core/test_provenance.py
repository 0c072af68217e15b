"""What produced a result is recorded: the commit (and whether tracked files
differ from it), the versions that move numbers, and the device."""

from __future__ import annotations

import hashlib
import subprocess
from importlib.metadata import version

import torch

from diffusion_transfer.core.provenance import (LOCK_FILE, PACKAGES, environment_line, environment_record, git_commit,
                                                lock_digest)


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_the_commit_says_when_tracked_files_differ_from_it(tmp_path):
    assert git_commit(tmp_path) == "unknown (not a git checkout)"
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("outputs are not changes")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("two")
    assert git_commit(tmp_path) == head + "+changes"


def test_the_record_holds_the_installed_versions_and_renders_in_one_line(tmp_path):
    record = environment_record(tmp_path)
    assert list(record) == ["commit", "lock", *PACKAGES, "device"] and record["lock"] == "none"
    assert all(record[p] == version(p) for p in PACKAGES if p != "torch") and record["device"]
    assert record["torch"] == torch.__version__ and record["torch"].startswith(version("torch"))
    line = environment_line(record)
    assert line.startswith("commit unknown (not a git checkout), lock none (torch ") and line.endswith(f" on {record['device']}")


def test_the_lock_is_named_by_its_digest(tmp_path):
    text = b"torch==2.14.1 --hash=sha256:00\n"
    (tmp_path / LOCK_FILE).write_bytes(text)
    assert lock_digest(tmp_path) == hashlib.sha256(text).hexdigest()[:12]
    assert environment_record(tmp_path)["lock"] == lock_digest(tmp_path)
    (tmp_path / LOCK_FILE).write_bytes(text + b"numpy==2.4.6\n")
    assert lock_digest(tmp_path) != hashlib.sha256(text).hexdigest()[:12]
