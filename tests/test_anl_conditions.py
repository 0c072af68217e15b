"""ANL's condition experiments (``anl_conditions_<d>``): which images condition
the seen and unseen rows, the table, and the pipeline's wiring."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_transfer.pipelines.anl_conditions.nodes import condition_pools, condition_sweep_table


def _set(names: list[str], offset: int) -> dict:
    images = np.stack([np.full((4, 4, 3), offset + i, np.uint8) for i in range(len(names))])
    return {"images": torch.from_numpy(images), "meta": {"names": names}}


def test_unseen_conditions_are_the_dataset_images_outside_the_training_set():
    curated = _set(["a.png", "c.png"], 0)
    reference = _set(["a.png", "b.png", "c.png", "d.png"], 10)  # a raw reference holds the training images too
    pools = condition_pools(curated, reference)
    assert [int(x[0, 0, 0]) for x in pools["seen"]] == [0, 1]
    assert [int(x[0, 0, 0]) for x in pools["unseen"]] == [11, 13]  # b.png and d.png


def test_a_few_shot_reference_is_unseen_whole():
    pools = condition_pools(_set(["s1", "s2"], 0), _set(["r1", "r2", "r3"], 20))
    assert len(pools["seen"]) == 2 and len(pools["unseen"]) == 3


def test_the_table_has_a_row_per_condition_set_and_rate_and_says_its_weights():
    result = {"dataset": "d", "sampler": "ddim, 40 steps", "fid_reference": "full set (30 images)",
              "rows": [{"conditions": "seen", "mask_rate": 0.0, "n": 10, "fid": 1.234, "kid_x1e3": 5.0,
                        "inception_score": 2.5, "inception_score_std": 0.1},
                       {"conditions": "unseen", "mask_rate": 0.5, "n": 10, "fid": 2.0, "kid_x1e3": 6.0,
                        "inception_score": 3.0, "inception_score_std": 0.2}],
              "weights": {"fid_kid": "W"}, "skipped": []}
    table = condition_sweep_table(result)
    assert "| seen | 0 | 10 | 1.23 | 5.00 | 2.50 ± 0.10 |" in table
    assert "| unseen | 0.5 | 10 | 2.00 | 6.00 | 3.00 ± 0.20 |" in table
    assert "- **fid_kid**: W" in table


def test_every_dataset_gets_the_pipeline_reading_the_anl_runs_model():
    from diffusion_transfer.project.config import active_parameters
    from diffusion_transfer.project.registry import register_pipelines

    pipelines = register_pipelines(active_parameters())
    pipe = pipelines["anl_conditions_aahq"]
    assert "anl_aahq.finetuned_model" in pipe.inputs()  # written by anl_aahq, checked before the run
    assert {"anl_aahq.condition_sweep", "anl_aahq.condition_sweep_report"} <= pipe.all_outputs()
    assert not any(n.name.endswith("finetune") for n in pipe.nodes)  # it trains nothing
