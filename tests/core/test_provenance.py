"""What produced a result is recorded: the commit (and whether tracked files
differ from it), the versions that move numbers, and the device."""

from __future__ import annotations

import subprocess
from importlib.metadata import version

import torch

from diffusion_transfer.core.provenance import PACKAGES, environment_line, environment_record, git_commit


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
    assert list(record) == ["commit", *PACKAGES, "device"]
    assert all(record[p] == version(p) for p in PACKAGES if p != "torch") and record["device"]
    assert record["torch"] == torch.__version__ and record["torch"].startswith(version("torch"))
    line = environment_line(record)
    assert line.startswith("commit unknown (not a git checkout) (torch ") and line.endswith(f" on {record['device']}")
