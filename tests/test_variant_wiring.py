"""The Kedro side of issue 14: ``translation.variant`` and the per-method
options reach ILVR and EGSDE, the translate meta names what ran, and sampling
meta records which variance ancestral sampling used."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.models.unet import build_unet
from diffusion_transfer.core.sampling import model_eps_fn
from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.translation import ilvr
from diffusion_transfer.project.schema import InvalidParametersError, TranslationParams, parse

TINY = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8)


def tiny(out_channels=3):
    torch.manual_seed(0)
    return build_unet({**TINY, "out_channels": out_channels}).eval()


def test_translation_options_resolve_from_the_variants():
    p = parse(TranslationParams, {}, "translation")
    assert p.options("ilvr") == {"variant": "paper", "filter": "block", "reference_step": "t_prev",
                                 "reference_noise": "fixed", "refine_last": True}
    assert p.options("egsde") == {"variant": "paper", "filter": "block", "clip_x0": True, "learned_variance": True}
    assert p.options("sdedit") == {}
    code = parse(TranslationParams, {"variant": "authors_code", "egsde": {"variant": "paper", "filter": "linear"}},
                 "translation")
    assert code.options("ilvr")["filter"] == "cubic" and code.options("ilvr")["refine_last"] is False
    assert code.options("egsde") == {"variant": "paper", "filter": "linear", "clip_x0": True,
                                     "learned_variance": True}


def test_bad_options_name_the_yaml_key():
    with pytest.raises(InvalidParametersError, match=r"translation\.ilvr\.filter"):
        parse(TranslationParams, {"ilvr": {"filter": "gaussian"}}, "translation")
    with pytest.raises(InvalidParametersError, match=r"translation\.egsde\.variant"):
        parse(TranslationParams, {"egsde": {"variant": "released"}}, "translation")


def test_translate_passes_the_options_and_records_them_and_the_variance():
    from diffusion_transfer.core.data.images import to_tensor
    from diffusion_transfer.pipelines.translate.nodes import translate
    from diffusion_transfer.project.resolved import ResolvedDataset
    from diffusion_transfer.project.schema import DatasetParams

    model = tiny(6)
    images = torch.randint(0, 256, (2, 8, 8, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    translation = {"n_inputs": 2, "batch_size": 2, "variant": "authors_code",
                   "sdedit": {"enabled": False}, "ddib": {"enabled": False},
                   "ilvr": {"steps": 3, "factor": 2}, "egsde": {"steps": 3, "factor": 2, "realism_weight": 0.0}}
    typed = parse(TranslationParams, translation, "translation")
    dataset = ResolvedDataset.of(DatasetParams(name="toy"), translation=typed)  # as the run resolves it
    out = translate(model, model, None, {"images": images}, typed, dataset, {})
    ilvr_meta, egsde_meta = out["meta"]["settings"]["ilvr"], out["meta"]["settings"]["egsde"]
    assert ilvr_meta["variant"] == "authors_code" and ilvr_meta["filter"] == "cubic"
    assert ilvr_meta["variance"].startswith("learned")
    assert egsde_meta["clip_x0"] is False and egsde_meta["variance"].startswith("fixed")  # EGSDE's fixedsmall

    # the ILVR images are the core call with the same options (translate's noise bank and generator seeds)
    from diffusion_transfer.core.sampling import make_noise_bank
    from diffusion_transfer.core.data.images import to_uint8

    sched = make_schedule()
    x = to_tensor(images.numpy())
    noise = make_noise_bank(2, (3, 8, 8), seed=7)
    y = ilvr(model_eps_fn(model, sched), x, sched, factor=2, t0=1.0, noise=noise, steps=3,
             generator=torch.Generator().manual_seed(11), variant="authors_code")
    assert torch.equal(out["ilvr"], torch.from_numpy(to_uint8(y.float().clamp(-1, 1))))


@pytest.mark.parametrize("channels, word", [(6, "learned"), (3, "fixed")])
def test_ancestral_sample_meta_records_the_variance(channels, word):
    from diffusion_transfer.pipelines.sample.nodes import sample
    from diffusion_transfer.project.schema import SamplingParams

    bank = {"noise": torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))}
    out = sample(tiny(channels), bank, SamplingParams(n_samples=2, sampler="ddpm", steps=2, batch_size=2), {})
    assert out["meta"]["variance"].startswith(word)
    from diffusion_transfer.pipelines.report.nodes import _sampling_lines

    assert _sampling_lines(out)[0] == f"Sampler: ddpm, 2 steps; variance: {out['meta']['variance']}."
    ddim = sample(tiny(channels), bank, SamplingParams(n_samples=2, sampler="ddim", steps=2, batch_size=2), {})
    assert "variance" not in ddim["meta"]
