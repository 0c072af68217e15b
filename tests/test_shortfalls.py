"""Every stage that uses fewer items than asked says so (issue 32): how many
were asked, how many were used and why, in the stage's summary
(``fewer_than_asked``) and in the report beside the skipped files. Nodes are
called directly on tiny inputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from diffusion_transfer.pipelines.shortfall import KEY, fewer_than_asked, shortfall_line, shortfall_lines
from tests._pipeline_helpers import _image_folder
from tests.test_edit_stage import TINY, HashClip, reference

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


def _line(records: list[dict], setting: str) -> str:
    return shortfall_line(next(r for r in records if r["setting"] == setting))


def test_a_record_only_when_fewer_were_used_and_one_line_for_it():
    assert fewer_than_asked("edit", "editing.n_test", 12, 12, "test images", "x") == []
    assert fewer_than_asked("edit", "editing.n_test", None, 3, "test images", "x") == []  # nothing asked
    [record] = fewer_than_asked("edit", "editing.n_test", 500, 12, "test images", "the dataset has 12 images")
    assert record == {"stage": "edit", "setting": "editing.n_test", "asked": 500, "used": 12,
                      "what": "test images", "why": "the dataset has 12 images"}
    assert shortfall_line(record) == "edit: 12 of the 500 test images asked (editing.n_test): the dataset has 12 images"
    assert shortfall_lines({}, None, {KEY: []}) == []
    lines = shortfall_lines({KEY: [record]}, None, {"other": 1}, {KEY: [{**record, "stage": "curate_d"}]})
    assert lines[:3] == ["", "Fewer items than asked:", ""]
    assert lines[3:] == [f"- {shortfall_line(record)}.", f"- curate_d: {shortfall_line(record)[6:]}."]


def test_the_edit_stage_says_it_edits_fewer_test_images_than_asked():
    from diffusion_transfer.core.models import build_unet
    from diffusion_transfer.pipelines.edit.nodes import (
        apply_edits,
        edit_grids,
        evaluate_edits,
        select_edit_inputs,
        train_edit_directions,
    )
    from diffusion_transfer.project.resolved import ResolvedDataset
    from diffusion_transfer.project.schema import DatasetParams, EvaluationParams
    from diffusion_transfer.project.schema_editing import editing_for

    editing = editing_for({"prompts": {"smiling": {"source": ["a man"], "target": ["a smiling man"]}},
                           "n_train": 2, "n_test": 500, "epochs": 1, "train_steps": 2, "inversion_steps": 2,
                           "steps": 2, "t_edit": 0.5, "t_boost": 0.2, "grid_inputs": 8})
    inputs = select_edit_inputs(reference(6), editing)
    assert inputs["test"].shape[0] == 5 and inputs["train"].shape[0] == 1  # 6 images, split 2 : 500
    why = "the dataset has 6 images, fewer than n_train + n_test = 502; split in proportion"
    assert inputs["meta"][KEY] == [
        {"stage": "edit", "setting": "editing.n_train", "asked": 2, "used": 1, "what": "training images (f_t)",
         "why": why},
        {"stage": "edit", "setting": "editing.n_test", "asked": 500, "used": 5, "what": "test images", "why": why}]

    torch.manual_seed(0)
    model, clip = build_unet(TINY).eval(), HashClip()
    directions = train_edit_directions(model, inputs, clip, editing, {})
    edits = apply_edits(model, directions, inputs, editing, {})
    dataset = ResolvedDataset.of(DatasetParams(name="faceworld_test"), editing=editing)
    metrics = evaluate_edits(edits, clip, None, EvaluationParams(attributes=False), editing, dataset)
    assert [r["setting"] for r in metrics[KEY]] == ["editing.n_train", "editing.n_test", "editing.grid_inputs"]
    assert json.loads(json.dumps(metrics))[KEY] == metrics[KEY]  # edit_metrics.json keeps them
    assert _line(metrics[KEY], "editing.n_test") == f"edit: 5 of the 500 test images asked (editing.n_test): {why}"
    assert _line(metrics[KEY], "editing.grid_inputs") == (
        "edit: 5 of the 8 inputs in each edit grid asked (editing.grid_inputs): the edit stage has 5 test images")
    assert edit_grids(edits, editing)["smiling"].size[1] == 2 * (16 + 2)  # the grid itself is as before


def test_curation_says_top_n_keeps_fewer_and_the_run_report_prints_it(tmp_path):
    from diffusion_transfer.pipelines.curate.nodes import curate
    from diffusion_transfer.pipelines.report.nodes import build_report
    from diffusion_transfer.project.schema import DatasetParams

    folder = _image_folder(tmp_path, 6, bad=1)
    model = SimpleNamespace(config=SimpleNamespace(sample_size=32))
    dataset = DatasetParams(name="toy", curation={"prompt": "a face", "top_n": 50,
                                                  "embeddings_cache": str(tmp_path / "emb")})
    curated, _, summary, _ = curate(folder, HashClip(), model, dataset, str(tmp_path))
    assert curated["images"].shape[0] == 6
    assert summary[KEY] == [{"stage": "curate_toy", "setting": "datasets.toy.curation.top_n", "asked": 50, "used": 6,
                             "what": "images by CLIP score",
                             "why": "the folder has 6 usable images (1 skipped as invalid)"}]
    plain = DatasetParams(name="toy", curation={"embeddings_cache": str(tmp_path / "emb")})
    assert curate(folder, HashClip(), model, plain, str(tmp_path))[2][KEY] == []  # no score filter: nothing asked

    lpips_short = fewer_than_asked("evaluate", "evaluation.lpips_pairs", 256, 2, "sample pairs", "2 samples")
    report = build_report(*_report_inputs(summary, {KEY: lpips_short}))[0]
    section = report[report.index("## Curation"):]
    assert section.index("skipped 1 file(s)") < section.index("Fewer items than asked:")
    assert ("- curate_toy: 6 of the 50 images by CLIP score asked (datasets.toy.curation.top_n): the folder has 6 "
            "usable images (1 skipped as invalid).") in section
    assert "- evaluate: 2 of the 256 sample pairs asked (evaluation.lpips_pairs): 2 samples." in section


def _report_inputs(curation_summary: dict, extra_metrics: dict) -> tuple:
    """The least :func:`build_report` reads: two samples per model, no training history."""
    metrics = {"n_samples": 2, "fid_reference": "raw set", "weights": {}, "skipped": [],
               "models": {"source": {}, "finetuned": {}}, **extra_metrics}
    train = {"steps": 1, "batch_size": 1, "lr": 1e-4, "ema_decay": 0.0}
    history = {"run": {"run": "naive_toy", "method": "naive", "dataset": "toy", "hyperparameters": {}, "train": train}}
    samples = {"images": torch.zeros(2, 8, 8, 3, dtype=torch.uint8)}
    return metrics, history, curation_summary, samples, samples


def test_anl_augment_says_it_tests_on_fewer_images_than_n_test(tmp_path):
    from diffusion_transfer.pipelines.anl_augment.nodes import augment_split, augmentation_table
    from tests.test_anl_augment import _dataset, _set

    lines = [{"file": f"{n}.png", "k": k} for n, k in zip("abcdefg", "xyxyxyz")]
    (tmp_path / "attributes.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    folder = SimpleNamespace(root=tmp_path)
    curated, ref = _set(["a.png", "b.png", "g.png"], 0), _set([f"{n}.png" for n in "abcdefg"], 10)
    data = augment_split(folder, curated, ref, _dataset(n_test=40))
    assert data["test"].shape[0] == 4
    [record] = data["meta"][KEY]
    assert record == {"stage": "anl_augment_d", "setting": "datasets.d.augmentation.n_test", "asked": 40, "used": 4,
                      "what": "test images", "why": "4 of the 4 test-pool images have a label of a kept class"}
    assert augment_split(folder, curated, ref, _dataset(n_test=3))["meta"][KEY] == []  # a draw of 3: as asked
    table = augmentation_table(_augment_result(data["meta"][KEY]))
    assert ("- anl_augment_d: 4 of the 40 test images asked (datasets.d.augmentation.n_test): 4 of the 4 test-pool "
            "images have a label of a kept class.") in table


def _augment_result(short: list[dict]) -> dict:
    row = {"n_train": 3, "accuracies": [0.5], "mean": 0.5, "std": None}
    return {"dataset": "d", "label_keys": ["k"], "classes": ["x", "y"], "n_classes": 2, "n_labelled": 2,
            "n_generated": 4, "n_test": 4, "test_source": "held out", "seeds": [0],
            "classifier": {"arch": "resnet18", "init": "from scratch", "steps": 3, "batch_size": 8, "lr": 0.001,
                           "weight_decay": 0.0, "hflip": True},
            "generator": {"model": "anl_d", "per_labelled": 2, "mask_rate": 0.5, "sampler": "ddim, 4 steps"},
            "rows": [{**row, "set": "labelled only (ERM)"}], "not_run": "not run",
            "skipped": {"classes": {}, "unlabelled_training": [], "unlabelled_test": [], "test_outside_classes": 0,
                        "test_not_drawn": 0, "label_problems": []}, KEY: short}


def test_evaluate_says_lpips_compares_fewer_pairs_than_asked(tmp_path):
    from diffusion_transfer.pipelines.evaluate.nodes import evaluate
    from diffusion_transfer.project.schema import DatasetParams, EvaluationParams

    g = torch.Generator().manual_seed(0)

    def images(n: int) -> dict:
        return {"images": torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g), "meta": {"names": []}}

    evaluation = EvaluationParams(attributes=False, lpips_pairs=256, cache_dir=str(tmp_path / "fid"))
    dataset = DatasetParams(name="toy", intra_lpips=False, attributes=False)
    metrics = evaluate(images(4), images(4), images(3), images(5), HashClip(), None, evaluation, dataset)
    assert metrics[KEY] == [{"stage": "evaluate", "setting": "evaluation.lpips_pairs", "asked": 256, "used": 4,
                             "what": "source/fine-tuned sample pairs for LPIPS src-trg",
                             "why": "each model has 4 samples (datasets.toy.n_samples, else sampling.n_samples)"}]
    assert shortfall_lines(metrics)[-1] == ("- evaluate: 4 of the 256 source/fine-tuned sample pairs for LPIPS "
                                            "src-trg asked (evaluation.lpips_pairs): each model has 4 samples "
                                            "(datasets.toy.n_samples, else sampling.n_samples).")
    enough = EvaluationParams(attributes=False, lpips_pairs=4, cache_dir=str(tmp_path / "fid"))
    assert evaluate(images(4), images(4), images(3), images(5), HashClip(), None, enough, dataset)[KEY] == []
