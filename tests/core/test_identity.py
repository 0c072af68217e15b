"""The ArcFace IR-SE50 network in model_ir_se50.pth's key layout, and the
identity metric built on it (random weights: the real file cannot be had here)."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.metrics.identity import IdentitySimilarity, face_crop
from diffusion_transfer.core.models.arcface import ArcFaceIRSE, ArcFaceLoadError, load_arcface


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    torch.manual_seed(0)
    model = ArcFaceIRSE(50)
    # Non-trivial BatchNorm statistics, so eval mode (running stats) matters.
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(model.state_dict(), path)
    return path


def test_the_module_has_model_ir_se50s_key_layout():
    state = ArcFaceIRSE(50).state_dict()
    # Keys and shapes of TreB1eN's Backbone(112, 50, 'ir_se'), written out by hand.
    expected = {
        "input_layer.0.weight": (64, 3, 3, 3),
        "input_layer.1.running_var": (64,),
        "input_layer.2.weight": (64,),                      # PReLU
        "body.0.res_layer.0.weight": (64,),                 # BN before the first conv
        "body.0.res_layer.1.weight": (64, 64, 3, 3),
        "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),     # SE, reduction 16
        "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),  # stage 2 opens with a projection shortcut
        "body.3.shortcut_layer.1.running_mean": (128,),
        "body.7.shortcut_layer.0.weight": (256, 128, 1, 1),
        "body.21.shortcut_layer.0.weight": (512, 256, 1, 1),
        "body.23.res_layer.5.fc2.weight": (512, 32, 1, 1),
        "output_layer.0.weight": (512,),
        "output_layer.3.weight": (512, 512 * 7 * 7),
        "output_layer.4.running_var": (512,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("body.0.shortcut_layer") for k in state)  # identity units: a 1x1 max-pool
    assert not any(k.startswith("body.24.") for k in state)               # 3 + 4 + 14 + 3 units
    assert not any(k.startswith("output_layer.1.") or k.startswith("output_layer.2.") for k in state)


def test_loading_is_strict_and_names_what_is_wrong(arcface_file, tmp_path):
    model = load_arcface(arcface_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    state = torch.load(arcface_file, weights_only=True)
    broken = dict(state)
    del broken["body.5.res_layer.1.weight"]
    broken["head.kernel"] = torch.zeros(512, 10)
    broken["output_layer.3.weight"] = torch.zeros(512, 512 * 14 * 14)  # the 224x224 variant
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ArcFaceLoadError) as err:
        load_arcface(tmp_path / "broken.pth")
    message = str(err.value)
    assert "missing: body.5.res_layer.1.weight" in message
    assert "unexpected: head.kernel" in message and "wrong shape: output_layer.3.weight" in message
    # DataParallel-saved files ("module." prefix) load too.
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.equal(load_arcface(tmp_path / "dp.pth")(x), model(x))
    with pytest.raises(FileNotFoundError):
        load_arcface(tmp_path / "absent.pth")


def test_embeddings_are_unit_vectors_independent_of_the_batch(arcface_file):
    model = load_arcface(arcface_file)
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        z = model(x)
        alone = model(x[1:2])
    assert z.shape == (3, 512)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(alone, z[1:2], atol=1e-5)  # eval-mode BatchNorm: no batch statistics
    with pytest.raises(ValueError, match="112x112"):
        model(torch.zeros(1, 3, 64, 64))


def test_face_crop_is_psps_box_pooled_to_112():
    x = torch.zeros(1, 3, 256, 256)
    x[:, :, 35:223, 32:220] = 1.0  # the face box
    crop = face_crop(x)
    assert crop.shape == (1, 3, 112, 112) and torch.allclose(crop, torch.ones_like(crop))
    small = torch.rand(1, 3, 32, 32)
    assert face_crop(small).shape == (1, 3, 112, 112)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        face_crop(torch.zeros(3, 32, 32))


def test_identity_is_one_for_the_same_face_and_ignores_the_background(arcface_file):
    metric = IdentitySimilarity(arcface_file)
    assert "ArcFace IR-SE50" in metric.label and "model_ir_se50.pth" in metric.label
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 3, 256, 256, generator=g) * 2 - 1
    b = torch.rand(4, 3, 256, 256, generator=g) * 2 - 1
    assert torch.allclose(metric(a, a), torch.ones(4), atol=1e-5)
    different = metric(a, b)
    assert different.shape == (4,) and (different < 0.999).all()
    background = a.clone()
    background[:, :, :30] = -1.0  # rows above the face box
    background[:, :, :, 225:] = 1.0  # columns right of it
    assert torch.allclose(metric(a, background), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        metric(a, b[:2])
