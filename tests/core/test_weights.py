"""Weights by path or release id: cache lookup, download when online (a fake
downloader; nothing here touches the network), clear messages offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_transfer.core import weights
from diffusion_transfer.core.weights import RELEASES, WeightsUnavailable, missing_weights, resolve_weights


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty project cache and torch hub folder; online unless a test says otherwise."""
    monkeypatch.setenv("DT_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DT_OFFLINE", raising=False)
    return tmp_path / "cache"


class FakeDownloader:
    def __init__(self, fail: bool = False):
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, release, dest: Path) -> None:
        self.calls.append(release.id)
        if self.fail:
            raise ConnectionError("name resolution failed")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"weights of " + release.id.encode())


def test_a_local_path_is_used_as_is_and_a_missing_one_is_named(tmp_path, cache):
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    assert resolve_weights(f) == f
    assert missing_weights(str(f)) is None
    why = missing_weights(str(tmp_path / "nope.pt"), "the ArcFace weights")
    assert "nope.pt does not exist" in why and "the ArcFace weights" in why and "arcface-ir-se50" in why
    with pytest.raises(WeightsUnavailable, match="nope.pt does not exist"):
        resolve_weights(tmp_path / "nope.pt")
    assert missing_weights(None) is None


def test_an_id_is_downloaded_once_into_the_cache_when_online(cache, monkeypatch):
    fake = FakeDownloader()
    monkeypatch.setattr(weights, "downloader", fake)
    assert missing_weights("alexnet") is None  # online: downloadable, so not missing
    path = resolve_weights("alexnet")
    assert path == cache / "alexnet-owt-7be5be79.pth" and path.read_bytes() == b"weights of alexnet"
    assert resolve_weights("alexnet") == path
    assert fake.calls == ["alexnet"]  # the second call found the cached file


def test_an_id_found_in_torch_hubs_checkpoints_is_not_downloaded(cache, tmp_path, monkeypatch):
    fake = FakeDownloader()
    monkeypatch.setattr(weights, "downloader", fake)
    hub_file = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"torchvision's own download")
    assert resolve_weights("vgg16") == hub_file
    assert fake.calls == []


def test_offline_an_uncached_id_is_missing_with_where_it_comes_from(cache, monkeypatch):
    fake = FakeDownloader()
    monkeypatch.setattr(weights, "downloader", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    why = missing_weights("arcface-ir-se50")
    assert "model_ir_se50.pth" in why and str(cache) in why and "HF_HUB_OFFLINE" in why
    assert "1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn" in why  # pSp's Google Drive release
    with pytest.raises(WeightsUnavailable, match="downloads are off"):
        resolve_weights("arcface-ir-se50")
    assert fake.calls == []
    (cache).mkdir(parents=True)
    (cache / "model_ir_se50.pth").write_bytes(b"placed by hand")
    assert missing_weights("arcface-ir-se50") is None  # offline, but cached
    assert resolve_weights("arcface-ir-se50") == cache / "model_ir_se50.pth"


def test_a_failed_download_says_where_from_and_leaves_no_file(cache, monkeypatch):
    monkeypatch.setattr(weights, "downloader", FakeDownloader(fail=True))
    with pytest.raises(WeightsUnavailable, match="nvlabs-fi-cdn.*name resolution failed|NVlabs.*name resolution"):
        resolve_weights("inception-2015-12-05")
    assert not (cache / "inception-2015-12-05.pt").exists()


def test_the_real_downloader_writes_atomically(cache, monkeypatch):
    """A download that dies half way leaves neither the file nor a partial."""
    def dies_half_way(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(b"half")
        raise ConnectionResetError("connection reset")

    monkeypatch.setattr(torch.hub, "download_url_to_file", dies_half_way)
    with pytest.raises(WeightsUnavailable, match="connection reset"):
        resolve_weights("squeezenet1_1")
    assert list(cache.iterdir()) == []

    seen = {}

    def completes(url, dst, hash_prefix=None, progress=True):
        seen.update(url=url, hash_prefix=hash_prefix)
        Path(dst).write_bytes(b"whole")

    monkeypatch.setattr(torch.hub, "download_url_to_file", completes)
    path = resolve_weights("squeezenet1_1")
    assert path.read_bytes() == b"whole" and [p.name for p in cache.iterdir()] == ["squeezenet1_1-b8a52dc0.pth"]
    assert seen == {"url": RELEASES["squeezenet1_1"].url, "hash_prefix": "b8a52dc0"}


def test_a_url_spec_is_cached_under_its_file_name(cache, monkeypatch):
    fake = FakeDownloader()
    monkeypatch.setattr(weights, "downloader", fake)
    path = resolve_weights("https://example.org/mirror/model_ir_se50.pth?download=1")
    assert path == cache / "model_ir_se50.pth"


def test_google_drive_release_without_gdown_says_how_to_get_it(cache, monkeypatch):
    monkeypatch.setattr(weights, "_has_gdown", lambda: False)
    why = missing_weights("arcface-ir-se50")
    assert "pip install gdown" in why and "model_ir_se50.pth" in why


def test_lpips_and_inception_take_release_ids(cache, monkeypatch):
    import torchvision

    from diffusion_transfer.core.metrics import LPIPSMetric
    from diffusion_transfer.core.metrics.fid import InceptionWeightsNotFound, resolve_inception_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        LPIPSMetric(backbone_weights="alexnet")
    with pytest.raises(InceptionWeightsNotFound, match="inception-2015-12-05.pt"):
        resolve_inception_path("inception-2015-12-05")
    cache.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), cache / "alexnet-owt-7be5be79.pth")
    metric = LPIPSMetric(backbone_weights="alexnet")
    assert metric.is_real and "alexnet-owt-7be5be79.pth" in metric.label
    (cache / "inception-2015-12-05.pt").write_bytes(b"torchscript")
    assert resolve_inception_path("inception-2015-12-05") == cache / "inception-2015-12-05.pt"


def test_the_arcface_release_is_fetched_from_google_drive_by_gdown(cache, monkeypatch):
    import types

    calls = []

    def download(id=None, output=None, quiet=False, **_):
        calls.append(id)
        Path(output).write_bytes(b"ir-se50")
        return output

    monkeypatch.setitem(__import__("sys").modules, "gdown", types.SimpleNamespace(download=download))
    monkeypatch.setattr(weights, "_has_gdown", lambda: True)
    path = resolve_weights("arcface-ir-se50")
    assert calls == ["1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn"]
    assert path == cache / "model_ir_se50.pth" and path.read_bytes() == b"ir-se50"
    assert [p.name for p in cache.iterdir()] == ["model_ir_se50.pth"]  # no partial left behind
