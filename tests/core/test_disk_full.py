"""A write that fails for lack of space (issue 32) raises ``DiskFullError``
naming the folder, the bytes needed and the bytes free, instead of torch's
``enforce fail``; the previous file stays whole and no temporary is left.

The full disk is simulated: the write raises ENOSPC (or torch's
RuntimeError) and ``shutil.disk_usage`` reports 1000 bytes free."""

from __future__ import annotations

import collections
import errno
import shutil

import pytest
import torch

from diffusion_transfer.core import io
from diffusion_transfer.core.io import DiskFullError, atomic_path, atomic_write_folder, space_checked

FREE = 1000
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1152 vs 1040")


@pytest.fixture
def full_disk(monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - FREE, FREE))


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_enospc_names_the_folder_the_bytes_needed_and_free(tmp_path, full_disk):
    target = tmp_path / "features.npy"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFullError) as caught:
        with atomic_path(target, needed=5000) as tmp:
            tmp.write_bytes(b"x" * 100)
            _no_space()
    message = str(caught.value)
    assert f"in {tmp_path}:" in message and "about 5000 bytes" in message and f"{FREE} bytes are free" in message
    assert "a rerun resumes" in message and caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_without_an_estimate_the_bytes_written_are_the_least_needed(tmp_path, full_disk):
    with pytest.raises(DiskFullError, match="about 4096 bytes"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x" * 4096)
            _no_space()


def test_torch_enforce_fail_is_a_full_disk_only_when_space_is_short(tmp_path, full_disk, monkeypatch):
    """The change for checkpoint.py's _atomic_save: torch.save inside space_checked."""
    payload = {"model": torch.zeros(1000)}  # 4000 bytes, more than the 1000 free
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(TORCH_FULL))
    with pytest.raises(DiskFullError, match=f"about 4000 bytes and {FREE} bytes are free") as caught:
        with space_checked(tmp_path, io.payload_bytes(payload)):
            torch.save(payload, tmp_path / "ckpt.pt")
    assert caught.value.__cause__ is TORCH_FULL
    with pytest.raises(RuntimeError, match="enforce fail"):  # enough room: some other failure, left as it is
        with space_checked(tmp_path, 10):
            torch.save(payload, tmp_path / "ckpt.pt")


def test_other_errors_pass_unchanged(tmp_path, full_disk):
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "x.json"):
            raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(ValueError):
        with space_checked(tmp_path, 10):
            raise ValueError("not a write")


def test_a_model_folder_keeps_its_previous_version(tmp_path, full_disk):
    folder = tmp_path / "finetuned"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    def write(tmp):
        (tmp / "half.safetensors").write_bytes(b"x" * 300)
        _no_space()

    with pytest.raises(DiskFullError, match=f"in {tmp_path}: the write needs about 8000 bytes"):
        atomic_write_folder(folder, write, needed=8000)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"] and _leftovers(tmp_path) == []


def test_kedro_datasets_report_a_full_disk(tmp_path, full_disk, monkeypatch):
    from kedro.io import DatasetError

    from diffusion_transfer.datasets import TensorDictDataset, UNetDataset

    path = tmp_path / "features.safetensors"
    TensorDictDataset(str(path)).save({"x": torch.ones(4)})
    before = path.read_bytes()
    monkeypatch.setattr("diffusion_transfer.datasets.tensors.save_file", _no_space)
    with pytest.raises(DatasetError) as caught:  # Kedro wraps what the dataset raised
        TensorDictDataset(str(path)).save({"x": torch.zeros(1000)})
    assert isinstance(caught.value.__cause__, DiskFullError) and "about 4000 bytes" in str(caught.value)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []

    monkeypatch.setattr("diffusion_transfer.core.models.unet.save_unet", lambda *a: (_ for _ in ()).throw(TORCH_FULL))
    with pytest.raises(DatasetError) as caught:
        UNetDataset(str(tmp_path / "unet")).save(torch.nn.Linear(999, 1))
    assert isinstance(caught.value.__cause__, DiskFullError)
    assert f"in {tmp_path / 'unet'}: the write needs about 4000 bytes" in str(caught.value)


def test_the_cli_names_the_folder_of_a_report_kedro_could_not_write(tmp_path, full_disk, monkeypatch):
    from kedro_datasets.json import JSONDataset

    from diffusion_transfer.cli import failure_message

    monkeypatch.setattr("json.dump", _no_space)
    with pytest.raises(Exception) as caught:
        JSONDataset(filepath=str(tmp_path / "08_reporting" / "metrics.json")).save({"fid": 1.0})
    message = failure_message(caught.value)
    assert message.startswith(f"not enough space to write in {tmp_path / '08_reporting'}: ")
    assert f"{FREE} bytes are free" in message and "--verbose" not in message
    assert failure_message(DiskFullError(tmp_path, 10, FREE)) == str(DiskFullError(tmp_path, 10, FREE))


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(tmp_path, full_disk, monkeypatch):
    from diffusion_transfer.core.training.checkpoint import _atomic_save, checkpoint_paths

    previous = tmp_path / "step_0000002.pt"
    previous.write_bytes(b"the step-2 checkpoint")
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(TORCH_FULL))
    with pytest.raises(DiskFullError, match=f"in {tmp_path}: .*about 4000 bytes and {FREE} bytes are free"):
        _atomic_save({"model": torch.zeros(1000)}, tmp_path / "step_0000004.pt")
    assert checkpoint_paths(tmp_path) == [previous] and previous.read_bytes() == b"the step-2 checkpoint"
    assert _leftovers(tmp_path) == []  # the half-written temporary is gone: a rerun resumes from step 2
