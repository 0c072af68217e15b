"""benchmarks/paper_rehearsal.py's parts that need no pipeline run: the paper-scale Inception
stand-in has clean-fid's TorchScript layout and Inception-v3's arithmetic, parameters merge block
by block, and the results page says the metrics are from substitute weights
(tests/test_paper_standins.py runs the tiny rehearsal end to end)."""

from __future__ import annotations

import pytest
import torch

from diffusion_transfer.core.metrics.extractors import _load_inception_layers
from tests._pipeline_helpers import load_script


@pytest.fixture(scope="module")
def rehearsal():
    return load_script("benchmarks/paper_rehearsal.py")


def test_the_paper_scale_inception_stand_in_loads_as_clean_fids_file(rehearsal, tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.manual_seed(0)
    torch.jit.script(rehearsal._Inception().eval()).save(str(path))
    layers = _load_inception_layers(path)  # what the evaluation node loads
    with torch.no_grad():
        features = layers(torch.rand(2, 3, 299, 299) * 2 - 1)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert sum(p.numel() for p in layers.parameters()) > 20_000_000  # Inception-v3's size, not a toy


def test_parameters_merge_block_by_block(rehearsal):
    merged = rehearsal.merge(rehearsal.REHEARSAL, {"train": {"steps": 5}, "sampling": {"steps": 10}})
    assert merged["train"] == {**rehearsal.REHEARSAL["train"], "steps": 5}
    assert merged["sampling"] == {"n_samples": 256, "steps": 10}
    assert rehearsal.REHEARSAL["train"]["steps"] == 200  # not mutated


def test_the_results_page_says_the_metrics_mean_nothing(rehearsal):
    results = {"pipeline": "sdft_aahq", "scale": "paper", "params": {"train": {"steps": 2}},
               "stand_ins": {"source_model": "a randomly initialised UNet"},
               "environment": {"device": "cuda", "gpu": "H100", "cpu": "x", "torch": "2"},
               "nodes": [{"node": "finetune", "wall_s": 12.0, "peak_gpu_gib": 20.5, "peak_rss_mib": 3000.0},
                         {"node": "report", "wall_s": 1.0, "peak_gpu_gib": None, "peak_rss_mib": 3100.0}],
               "stand_ins_s": 5.0, "wall_s": 30.0}
    page = rehearsal.to_markdown(results)
    assert "substitute weights" in page and "mean nothing" in page
    assert "| finetune | 12.0 | 20.5 | 3000 |" in page and "| report | 1.0 | - | 3100 |" in page
    assert "Nodes 13 s" in page and "H100" in page
