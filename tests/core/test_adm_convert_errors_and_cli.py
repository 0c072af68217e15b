"""core/models/adm.py and ``dt-convert-adm``: a checkpoint or configuration that
does not fit is named clearly (missing, extra and misshapen keys, unreadable
files, what diffusers cannot express); the command line and the
``convert_source`` node write a loadable model. Checkpoints come from
``RefADMUNet`` (tests/core/_adm_reference.py)."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion_transfer.core.models.adm_cli import main as cli_main
from diffusion_transfer.core.models.adm import FFHQ_P2, ADMCheckpointError, ADMConfig, convert_adm_checkpoint
from diffusion_transfer.core.models.unet import load_unet
from tests.core._adm_reference import TINY, TINY_DEEP, _inputs, reference, variant

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


# --------------------------------------------------------------------------- errors


def _error(state_dict, cfg=TINY) -> str:
    with pytest.raises(ValueError) as info:
        convert_adm_checkpoint(state_dict, cfg)
    assert isinstance(info.value, ADMCheckpointError)
    return str(info.value)


def test_missing_extra_and_misshapen_keys_are_named():
    sd = reference(TINY).state_dict()
    missing = dict(sd)
    del missing["input_blocks.3.1.qkv.bias"]
    msg = _error(missing)
    assert "1 missing key" in msg and "input_blocks.3.1.qkv.bias" in msg

    extra = {**sd, "label_emb.weight": torch.zeros(10, 128)}
    msg = _error(extra)
    assert "1 unexpected key" in msg and "label_emb.weight" in msg and "class-conditional" in msg

    misshapen = {**sd, "out.2.weight": torch.zeros(3, 32, 3, 3)}
    msg = _error(misshapen)
    assert "out.2.weight: shape (3, 32, 3, 3), expected (6, 32, 3, 3)" in msg

    not_a_tensor = {**sd, "out.2.bias": [0.0] * 6}
    assert "out.2.bias: a list" in _error(not_a_tensor)


def test_checkpoint_of_another_config_names_the_keys():
    msg = _error(reference(TINY).state_dict(), TINY_DEEP)
    # TINY_DEEP attends at 16x16 (input block 1); its input block 3 is the 32->32 down ResBlock
    # where TINY has a 32->64 ResBlock (with a skip conv).
    assert "missing key" in msg and "input_blocks.1.1.qkv.weight" in msg
    assert "unexpected key" in msg and "input_blocks.3.0.skip_connection.weight" in msg
    assert "num_channels=32" in msg and "4 input_blocks (attention in [3])" in msg  # what the checkpoint looks like


def test_missing_and_unreadable_files(tmp_path):
    path = tmp_path / "models" / "ffhq_p2.pt"
    with pytest.raises(FileNotFoundError) as info:
        convert_adm_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "ffhq_p2.pt" in msg and "P2-weighting" in msg

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ADMCheckpointError, match="could not read"):
        convert_adm_checkpoint(garbage, TINY)


def test_loads_a_saved_checkpoint_and_unwraps_ddp_prefixes(tmp_path):
    sd = reference(TINY).state_dict()
    path = tmp_path / "model.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    model = convert_adm_checkpoint(path, TINY)
    assert torch.equal(model.conv_out.weight, sd["out.2.weight"])


def test_config_rejects_what_diffusers_cannot_express():
    with pytest.raises(ValueError, match="channel_mult\\[0\\] must be 1"):
        ADMConfig(channel_mult="0.5,1,2")
    with pytest.raises(ValueError, match="does not divide"):
        variant(num_head_channels=24)
    with pytest.raises(ValueError, match="must divide the attention channels"):
        variant(num_head_channels=-1, num_heads=3)  # 32 and 64 channels: no whole head width
    with pytest.raises(ValueError, match="noise_schedule"):
        variant(noise_schedule="sqrt")
    assert ADMConfig(channel_mult="1,1,2", attention_resolutions="32,16", image_size=64).channel_mult == (1, 1, 2)


# --------------------------------------------------------------------------- CLI


def test_cli_converts_into_a_loadable_folder(tmp_path, capsys):
    ref = reference(TINY)
    ckpt = tmp_path / "tiny_adm.pt"
    torch.save(ref.state_dict(), ckpt)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"image_size": 16, "num_channels": 32, "channel_mult": [1, 2]}))
    out = tmp_path / "models" / "tiny_diffusers"
    # JSON over the preset, flags over the JSON.
    argv = [str(ckpt), str(out), "--preset", "ffhq_p2", "--config", str(config),
            "--attention-resolutions", "8", "--num-head-channels", "16"]
    assert cli_main(argv) == 0
    assert "converted" in capsys.readouterr().out

    model = load_unet(out)
    x, t = _inputs(TINY)
    with torch.no_grad():
        assert (model(x, t).sample - ref(x, t)).abs().max().item() < 1e-4

    # An existing folder is kept unless --overwrite.
    assert cli_main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0


def test_cli_errors_are_clear_messages(tmp_path, capsys):
    assert cli_main([str(tmp_path / "ffhq_p2.pt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "P2-weighting" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

    ckpt = tmp_path / "tiny_adm.pt"
    torch.save(reference(TINY).state_dict(), ckpt)
    assert cli_main([str(ckpt), str(tmp_path / "out")]) == 1  # the FFHQ preset does not fit
    assert "missing key" in capsys.readouterr().err

    assert cli_main([str(ckpt), str(tmp_path / "out"), "--channel-mult", "0.5,1"]) == 1
    assert "channel_mult" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "--config" in capsys.readouterr().out


def test_convert_source_node_converts_a_checkpoint_with_preset_overrides(tmp_path):
    """The Kedro node behind ``kedro run --pipeline=convert_source``."""
    from diffusion_transfer.pipeline_registry import register_pipelines
    from diffusion_transfer.pipelines.convert.nodes import convert_source
    from diffusion_transfer.project.schema import ConvertParams

    ref = reference(TINY)
    ckpt = tmp_path / "tiny_adm.pt"
    torch.save(ref.state_dict(), ckpt)
    overrides = {k: v for k, v in TINY.model_dump().items() if v != FFHQ_P2.model_dump()[k]}
    model = convert_source(ConvertParams(checkpoint=str(ckpt), preset="ffhq_p2", overrides=overrides))
    x, t = _inputs(TINY)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t).sample, ref(x, t), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="ffhq_p2.pt"):
        convert_source(ConvertParams(checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match="preset"):
        convert_source(ConvertParams(checkpoint=str(ckpt), preset="lsun"))
    pipe = register_pipelines()["convert_source"]
    assert pipe.outputs() == {"converted_source_model"}
