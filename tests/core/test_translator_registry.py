"""The translator registry (``core/translation/registry.py``): its names and
labels in the tables' order, each parameter model against the YAML blocks of
every environment, and unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffusion_transfer.core.schedule import make_schedule
from diffusion_transfer.core.translation import ddib, egsde, ilvr, sdedit
from diffusion_transfer.core.translation.common import TranslationBatch
from diffusion_transfer.core.translation.registry import TRANSLATORS, translator, translator_label

ROOT = Path(__file__).resolve().parents[2]
#: (file, path to the ``translation`` block) of each environment that sets one
TRANSLATION_BLOCKS = (("conf/base/parameters_translate.yml", ("translation",)),
                      ("conf/smoke/parameters.yml", ("translation",)),
                      ("conf/paper/parameters.yml", ("translation",)))


def _translation_block(file: str, keys: tuple[str, ...]) -> dict:
    block = yaml.safe_load((ROOT / file).read_text())
    for key in keys:
        block = block[key]
    return block


def test_names_and_labels_in_the_tables_order():
    """SDFT Table 1's order, which is also the order of the base YAML block."""
    assert list(TRANSLATORS) == ["sdedit", "ilvr", "egsde", "ddib"]
    assert [info.label for info in TRANSLATORS.values()] == ["SDEdit", "ILVR", "EGSDE", "DDIB"]
    base = _translation_block(*TRANSLATION_BLOCKS[0])
    assert [key for key in base if key in TRANSLATORS] == list(TRANSLATORS)
    assert all(info.name == name for name, info in TRANSLATORS.items())


@pytest.mark.parametrize("file, keys", TRANSLATION_BLOCKS)
def test_each_params_model_validates_its_yaml_block(file, keys):
    block = _translation_block(file, keys)
    found = [name for name in TRANSLATORS if name in block]
    assert found, f"{file} sets no translator block"
    for name in found:
        params = TRANSLATORS[name].params.model_validate(block[name])
        assert params.model_dump(exclude_unset=True) == block[name], name


def test_params_models_refuse_unknown_keys():
    for info in TRANSLATORS.values():
        with pytest.raises(ValueError, match="steps_typo"):
            info.params.model_validate({"steps_typo": 3})


def test_unknown_translator_names_itself():
    with pytest.raises(ValueError, match=r"unknown translator 'cyclegan'.*sdedit"):
        translator("cyclegan")
    assert translator("egsde") is TRANSLATORS["egsde"]
    assert translator_label("ddib") == "DDIB" and translator_label("cyclegan") == "cyclegan"


def test_each_run_function_is_its_translator_with_the_block():
    """The registry's call passes the block and the batch through unchanged:
    the same images as the translator called by hand, the same generator draws."""
    sched = make_schedule(num_timesteps=20)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = lambda x, t: 0.1 * x  # noqa: E731  (a stand-in model)
    features = lambda x, t: x  # noqa: E731
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    batch = dict(x=x, noise=noise, schedule=sched, target_eps=eps, source_eps=lambda x, t: 0.2 * x,
                 features=features)
    by_hand = {
        "sdedit": lambda: sdedit(eps, x, sched, t0=0.5, noise=noise, sampler="ddpm", steps=3, generator=gen()),
        "ilvr": lambda: ilvr(eps, x, sched, factor=2, t0=1.0, noise=noise, steps=3, generator=gen(),
                             variant="authors_code"),
        "egsde": lambda: egsde(eps, x, sched, features=features, factor=2, t0=0.5, noise=noise, steps=3,
                               generator=gen()),
        "ddib": lambda: ddib(lambda x, t: 0.2 * x, eps, x, sched, steps=3),
    }
    blocks = {"sdedit": {"sampler": "ddpm", "steps": 3}, "ilvr": {"steps": 3, "factor": 2},
              "egsde": {"steps": 3, "factor": 2}, "ddib": {"steps": 3}}
    options = {"ilvr": {"variant": "authors_code"}}
    for name, info in TRANSLATORS.items():
        t0 = {"sdedit": 0.5, "ilvr": 1.0, "egsde": 0.5}.get(name)
        y = info.run(info.params(**blocks[name]),
                     TranslationBatch(**batch, generator=gen(), t0=t0, options=options.get(name, {})))
        assert torch.equal(y, by_hand[name]()), name
