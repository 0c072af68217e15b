"""The evaluate node: the Inception Score is in the metrics, with its weights
label, when it is on and absent when it is off; the report says when its
network is a substitute; ``fid_reference: full`` compares a few-shot
split's samples with the whole folder (ANL 4.2). FaceWorld-sized inputs, a
random classifier and a stand-in CLIP: no network, no real weights."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_transfer.core.world.classifier import AttributeClassifier
from diffusion_transfer.pipelines.evaluate.nodes import evaluate
from diffusion_transfer.pipelines.report.nodes import _inception_score_lines, _metrics_table
from diffusion_transfer.project.schema import DatasetParams, EvaluationParams


class _Clip:
    weights_label = "stand-in CLIP"
    name = "stand-in"

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.float().mean(dim=(2, 3)).repeat(1, 3), dim=-1)


def _set(n: int, seed: int) -> dict:
    images = torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
    return {"images": images, "meta": {"names": [f"{seed}_{i}.png" for i in range(n)], "records": []}}


def _evaluate(tmp_path, dataset: DatasetParams, **evaluation):
    ev = EvaluationParams(fid_features="clip", cache_dir=str(tmp_path / "cache"), lpips_pairs=4, attributes=False,
                          **evaluation)
    torch.manual_seed(0)
    clf = AttributeClassifier().eval()
    return evaluate(_set(8, 1), _set(8, 2), _set(5, 3), _set(6, 4), _Clip(), clf, ev, dataset)


def test_inception_score_is_reported_with_its_weights_when_on_and_absent_when_off(tmp_path):
    faceworld = DatasetParams(name="aahq", attributes=True)
    on = _evaluate(tmp_path, faceworld, inception_score=True, inception_score_splits=2)
    for key in ("source", "finetuned"):
        assert on["models"][key]["inception_score"] >= 1.0 and on["models"][key]["inception_score_splits"] == 2
    assert on["models"]["source"]["inception_score"] != on["models"]["finetuned"]["inception_score"]
    assert on["inception_score_substitute"] is True
    assert "substitute for Inception; not comparable to published IS" in on["weights"]["inception_score"]
    table = "\n".join(_metrics_table(on, "sdft") + _inception_score_lines(on))
    assert "IS-substitute ↑" in table and "| IS ↑" not in table
    assert "IS-substitute (not comparable to published IS)" in table

    off = _evaluate(tmp_path, faceworld)  # evaluation.inception_score defaults to false
    assert "inception_score" not in off["models"]["source"] and "inception_score" not in off["weights"]
    assert "inception_score_substitute" not in off
    assert all("IS" not in line for line in _metrics_table(off, "sdft"))
    assert off["models"]["finetuned"]["fid"] == on["models"]["finetuned"]["fid"]  # nothing else moves

    # the dataset's own flag wins over evaluation.inception_score
    flagged = _evaluate(tmp_path, DatasetParams(name="aahq", attributes=True, inception_score=True),
                        inception_score_splits=1)
    assert flagged["models"]["finetuned"]["inception_score_splits"] == 1


def test_fid_reference_full_is_the_whole_folder_of_a_few_shot_split(tmp_path):
    common = dict(name="c", kind="few_shot", curation={"n_shot": 5})
    full = _evaluate(tmp_path, DatasetParams(fid_reference="full", **common))
    rest = _evaluate(tmp_path, DatasetParams(fid_reference="raw", **common))
    assert full["fid_reference"] == "full set (11 of 11 images)"  # 5 shots + 6 held out
    assert rest["fid_reference"] == "raw set (6 of 6 images)"
    assert full["models"]["finetuned"]["fid"] != rest["models"]["finetuned"]["fid"]
