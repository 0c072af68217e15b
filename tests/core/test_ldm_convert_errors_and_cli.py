"""core/models/ldm.py and ``dt-convert-ldm``: a checkpoint or configuration that
does not fit is named clearly (missing, extra and misshapen keys, another
schedule, unreadable files), Lightning checkpoints load without their
training classes, and the command line writes a loadable pipeline folder.
Checkpoints come from ``RefLDM`` (tests/core/_ldm_reference.py)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from diffusers import DiffusionPipeline

from diffusion_transfer.core.models.ldm import (
    PRESETS,
    LDMCheckpointError,
    LDMConfig,
    class_context,
    convert_ldm_checkpoint,
)
from diffusion_transfer.core.models.ldm_cli import main as cli_main
from tests.core._ldm_reference import TINY, TINY_DEEP, checkpoint, reference

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def _error(state_dict, cfg=TINY) -> str:
    with pytest.raises(LDMCheckpointError) as info:
        convert_ldm_checkpoint(state_dict, cfg)
    return str(info.value)


# --------------------------------------------------------------------------- bad checkpoints


def test_missing_extra_and_misshapen_keys_are_named():
    sd = checkpoint(TINY)
    missing = dict(sd)
    del missing["model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"]
    msg = _error(missing)
    assert "1 missing key" in msg and "middle_block.1.transformer_blocks.0.attn2.to_k.weight" in msg

    extra = {**sd, "model_ema.decay": torch.tensor(0.9999)}
    msg = _error(extra)
    assert "1 unexpected key" in msg and "model_ema.decay" in msg

    n, d = sd["cond_stage_model.embedding.weight"].shape
    misshapen = {**sd, "cond_stage_model.embedding.weight": torch.zeros(n + 3, d)}
    msg = _error(misshapen)
    assert f"cond_stage_model.embedding.weight: shape ({n + 3}, {d}), expected ({n}, {d})" in msg
    assert f"ClassEmbedder n_classes={n + 3}" in msg  # what the checkpoint itself says

    not_a_tensor = {**sd, "first_stage_model.quant_conv.bias": [0.0] * 3}
    assert "first_stage_model.quant_conv.bias: a list" in _error(not_a_tensor)


def test_checkpoint_of_another_config_names_the_keys_and_the_fix():
    msg = _error(checkpoint(TINY), TINY_DEEP)
    assert "missing key" in msg and "unexpected key" in msg and "shape mismatch" in msg
    # TINY's level-0 downsampler is TINY_DEEP's second level-0 ResBlock; TINY_DEEP's decoder has 3 blocks a level.
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in msg
    assert "first_stage_model.decoder.up.0.block.2.conv1.weight" in msg
    assert (f"cond_stage_model.embedding.weight: shape ({TINY.n_classes}, {TINY.unet.context_dim}), "
            f"expected ({TINY_DEEP.n_classes}, {TINY_DEEP.unet.context_dim})") in msg
    assert "cin256-v2" in msg and "preset" in msg


def test_another_schedule_is_refused():
    sd = checkpoint(TINY)
    sd["betas"] = torch.linspace(1e-4, 0.02, TINY.timesteps)  # DDPM's linear schedule
    msg = _error(sd)
    assert "another noise schedule" in msg and str(TINY.linear_end) in msg


def test_stored_scale_factor_becomes_the_scaling_factor():
    sd = {**checkpoint(TINY), "scale_factor": torch.tensor(0.75)}  # LatentDiffusion(scale_by_std=True) stores it
    assert convert_ldm_checkpoint(sd, TINY).vqvae.config.scaling_factor == 0.75
    assert convert_ldm_checkpoint(checkpoint(TINY), TINY).vqvae.config.scaling_factor == TINY.scale_factor


def test_missing_and_unreadable_files(tmp_path):
    path = tmp_path / "models" / "cin256-v2" / "model.ckpt"
    with pytest.raises(FileNotFoundError) as info:
        convert_ldm_checkpoint(path, TINY)
    msg = str(info.value)
    assert str(path) in msg and "does not exist" in msg and "ommer-lab.com" in msg and "download" in msg
    with pytest.raises(LDMCheckpointError, match="is a directory"):
        convert_ldm_checkpoint(tmp_path, TINY)

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LDMCheckpointError, match="could not read") as info:
        convert_ldm_checkpoint(garbage, TINY)
    assert str(garbage) in str(info.value)

    not_weights = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(LDMCheckpointError, match="holds a list, not a state dict"):
        convert_ldm_checkpoint(not_weights, TINY)


def test_lightning_checkpoint_with_pickled_training_classes_loads(tmp_path, monkeypatch):
    """Like CompVis's model.ckpt: the weights under ``state_dict`` next to pickled
    Lightning callback classes that are not installed when the file is read."""
    names = ["fake_lightning", "fake_lightning.callbacks"]
    modules = {name: types.ModuleType(name) for name in names}

    class ModelCheckpoint:  # stands for pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint
        def __init__(self):
            self.dirpath = "logs/checkpoints"

    ModelCheckpoint.__module__ = "fake_lightning.callbacks"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    modules["fake_lightning.callbacks"].ModelCheckpoint = ModelCheckpoint
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    sd = checkpoint(TINY)
    path = tmp_path / "model.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": sd, "callbacks": {ModelCheckpoint: {"best": 1.0}},
                "hparams": ModelCheckpoint()}, path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(Exception, match="Unsupported global"):  # what plain weights_only loading says
        torch.load(path, weights_only=True)
    parts = convert_ldm_checkpoint(path, TINY)
    assert torch.equal(parts.unet.conv_out.weight, sd["model.diffusion_model.out.2.weight"])
    assert "fake_lightning" not in sys.modules  # nothing was imported


def test_config_rejects_what_the_converter_cannot_express():
    base = TINY.model_dump()
    with pytest.raises(ValueError, match="channel_mult\\[0\\] must be 1"):
        LDMConfig(**{**base, "unet": {**base["unet"], "channel_mult": (2, 4)}})
    with pytest.raises(ValueError, match="rates"):
        LDMConfig(**{**base, "unet": {**base["unet"], "attention_resolutions": (32,)}})
    with pytest.raises(ValueError, match="num_heads 3 does not divide"):
        LDMConfig(**{**base, "unet": {**base["unet"], "num_heads": 3}})
    with pytest.raises(ValueError, match="attn_resolutions"):
        LDMConfig(**{**base, "first_stage": {**base["first_stage"], "attn_resolutions": (8,)}})
    with pytest.raises(ValueError, match="embed_dim"):
        LDMConfig(**{**base, "first_stage": {**base["first_stage"], "embed_dim": 4}})
    with pytest.raises(ValueError, match="linear_start"):
        LDMConfig(**{**base, "linear_start": 0.03})
    with pytest.raises(ValueError, match="extra"):
        LDMConfig(**{**base, "unet": {**base["unet"], "use_scale_shift_norm": True}})


# --------------------------------------------------------------------------- CLI


def test_cli_converts_into_a_loadable_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", TINY)  # the CLI offers the presets
    ref = reference(TINY)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": checkpoint(TINY), "global_step": 1}, ckpt)
    out = tmp_path / "models" / "tiny_ldm"
    argv = [str(ckpt), str(out), "--preset", "tiny"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "converted" in printed and str(out) in printed and f"{TINY.n_classes} classes" in printed

    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, TINY.unet.image_size, TINY.unet.image_size, generator=g)
    t, y = torch.tensor([1, 900]), torch.tensor([3, 0])
    with torch.no_grad():
        got = pipe.unet(x, t, encoder_hidden_states=class_context(y, TINY.n_classes)).sample
        assert (got - ref.eps(x, t, y)).abs().max().item() < 1e-4

    # An existing folder is kept unless --overwrite.
    assert cli_main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0


def test_cli_errors_are_clear_messages(tmp_path, capsys):
    assert cli_main([str(tmp_path / "model.ckpt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dt-convert-ldm: error:") and "ommer-lab.com" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": checkpoint(TINY)}, ckpt)
    assert cli_main([str(ckpt), str(tmp_path / "out")]) == 1  # the cin256_v2 preset does not fit
    err = capsys.readouterr().err
    assert "missing key" in err and str(ckpt) in err
    assert not (tmp_path / "out").exists()

    with pytest.raises(SystemExit) as info:
        cli_main([str(ckpt), str(tmp_path / "out"), "--preset", "lsun"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "cin256_v2" in capsys.readouterr().out
