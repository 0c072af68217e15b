"""core/models/unet.py: build / save / load round trip, eps slicing, load errors."""

import time

import pytest
import torch

from diffusion_transfer.core.models import (
    ModelLoadError,
    build_unet,
    learns_variance,
    load_unet,
    predict_eps,
    save_unet,
)
from diffusion_transfer.core.schedule import make_schedule

EPS = make_schedule()  # epsilon prediction

TINY = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
    norm_num_groups=4,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 700])


def test_build_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_unet(TINY).eval()
    x, t = _inputs()
    target = tmp_path / "models" / "source"
    save_unet(model, target)
    assert (target / "config.json").is_file()
    assert (target / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_unet(target).eval()
    with torch.no_grad():
        torch.testing.assert_close(predict_eps(loaded, x, t, schedule=EPS), predict_eps(model, x, t, schedule=EPS),
                                   rtol=0, atol=0)
    # also accepts a str path
    assert isinstance(load_unet(str(target)), type(model))


def test_save_overwrites_atomically_and_leaves_no_temp(tmp_path):
    target = tmp_path / "unet"
    save_unet(build_unet(TINY), target)
    torch.manual_seed(1)
    second = build_unet(TINY).eval()
    save_unet(second, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]
    x, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(predict_eps(load_unet(target), x, t, schedule=EPS),
                                   predict_eps(second, x, t, schedule=EPS))


def test_build_validates_config():
    with pytest.raises(ValueError, match="out_channels"):
        build_unet({**TINY, "out_channels": 4})
    with pytest.raises(ValueError, match="sample_size"):
        build_unet({**TINY, "sample_size": 0})
    cfg = dict(TINY)
    del cfg["sample_size"]
    with pytest.raises(ValueError, match="sample_size"):
        build_unet(cfg)
    with pytest.raises(ValueError, match="not_a_kwarg"):
        build_unet({**TINY, "not_a_kwarg": 1})


def test_predict_eps_slices_learned_variance():
    torch.manual_seed(0)
    model = build_unet({**TINY, "out_channels": 6}).eval()
    assert learns_variance(model)
    assert not learns_variance(build_unet(TINY))
    x, t = _inputs()
    with torch.no_grad():
        full = model(x, t).sample
        eps = predict_eps(model, x, t, schedule=EPS)
    assert full.shape == (2, 6, 8, 8)
    assert eps.shape == (2, 3, 8, 8)
    torch.testing.assert_close(eps, full[:, :3])


def test_missing_folder_fails_fast_with_path(tmp_path):
    missing = tmp_path / "no" / "such" / "unet"
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_unet(missing)
    assert time.perf_counter() - start < 5
    assert str(missing) in str(info.value)
    assert "config.json" in str(info.value)  # says how to provide it


def test_bad_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_unet("nobody-here/definitely-not-a-model")
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "nobody-here/definitely-not-a-model" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_folder_missing_weights_or_config(tmp_path):
    target = tmp_path / "unet"
    save_unet(build_unet(TINY), target)
    (target / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="diffusion_pytorch_model.safetensors"):
        load_unet(target)
    (target / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_unet(target)


def test_corrupt_weights_is_a_model_load_error(tmp_path):
    target = tmp_path / "unet"
    save_unet(build_unet(TINY), target)
    (target / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=str(target)):
        load_unet(target)
