"""ANL's semi-supervised augmentation (``anl_augment_<d>``, ANL Table 2): the
labelled / test split, the generated images' labels, the accuracy, the table,
the parameters and the pre-run check, and one smoke run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_transfer.core.data.labels import labelled_split, per_condition, read_labels
from diffusion_transfer.core.training.erm import accuracy, mean_std
from diffusion_transfer.pipelines.anl_augment.nodes import augment_split, augmentation_table
from diffusion_transfer.project.schema import DatasetParams, InvalidParametersError, parse
from tests._pipeline_helpers import SMOKE_DATA, _scratch_project

pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(**classes: list[str]) -> dict:
    return {name: tuple(k.split("_")) for k, names in classes.items() for name in names}


def test_the_split_takes_k_per_class_disjoint_from_the_test_set_and_lists_what_it_leaves_out():
    training = [f"t{i}" for i in range(9)] + ["nolabel"]
    labels = _labels(a_x=["t0", "t1", "t2", "t3", "p0", "p1"], b_y=["t4", "t5", "t6", "p2"], c_z=["t7", "t8", "p3"])
    pool = ["p0", "p1", "p2", "p3", "p4", "t0"]  # a raw reference holds the training images too; p4 has no label
    split = labelled_split(training, pool, labels, per_class=3, n_test=None, seed=0)
    assert split.classes == [("a", "x"), ("b", "y")]
    assert [split.labelled_labels.count(k) for k in (0, 1)] == [3, 3]
    assert all(labels[n] == split.classes[y] for n, y in zip(split.labelled, split.labelled_labels))
    assert set(split.labelled) <= set(training) and not set(split.labelled) & set(split.test)
    assert split.test == ["p0", "p1", "p2"] and split.test_labels == [0, 0, 1]  # never t0, a training image
    assert split.skipped_classes == {("c", "z"): 2}  # too few training images: listed, never silently dropped
    assert split.unlabelled_training == ["nolabel"] and split.unlabelled_test == ["p4"]
    assert split.test_outside_classes == 1  # p3, of the skipped class
    again = labelled_split(training, pool, labels, per_class=3, n_test=2, seed=0)
    assert again.labelled == split.labelled and len(again.test) == 2 and again.test_not_drawn == 1  # seeded
    assert labelled_split(training, pool, labels, 3, None, seed=1).labelled != split.labelled


def test_a_label_file_line_without_a_key_is_listed(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"file": "a.png", "class": 3}\n{"file": "b.png"}\nnot json\n\n{"class": 1}\n')
    labels, problems = read_labels(path, ["class"])
    assert labels == {"a.png": ("3",)}
    assert [w for w, _ in problems] == ["labels.jsonl line 2", "labels.jsonl line 3", "labels.jsonl line 5"]


def test_each_generated_image_carries_its_condition_images_class():
    condition, labels = per_condition([2, 0, 1], per_labelled=3)
    assert condition.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert labels.tolist() == [2, 2, 2, 0, 0, 0, 1, 1, 1]


class _Brightness(torch.nn.Module):
    """Class 1 when an image's mean is above 0, else 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3)) * self.w
        return torch.stack([-m, m], dim=1)


def test_accuracy_is_the_share_of_test_images_whose_arg_max_is_their_label():
    images = torch.stack([torch.full((3, 2, 2), v) for v in (-0.5, 0.5, 0.2, -0.1, 0.9)])
    labels = torch.tensor([0, 1, 0, 0, 0])  # predicted 0, 1, 1, 0, 1: right, right, wrong, right, wrong
    assert accuracy(_Brightness(), images, labels, batch_size=2) == pytest.approx(3 / 5)
    mean, std = mean_std([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)  # sample std: sqrt(0.02 / 2)
    assert mean_std([0.4]) == (0.4, None)


def _set(names: list[str], offset: int) -> dict:
    images = np.stack([np.full((4, 4, 3), offset + i, np.uint8) for i in range(len(names))])
    return {"images": torch.from_numpy(images), "meta": {"names": names}}


def _dataset(**augmentation) -> DatasetParams:
    block = {"label_keys": ["k"], "labels_per_class": 1, **augmentation}
    return parse(DatasetParams, {"name": "d", "augmentation": block}, "datasets.d")


def test_the_split_node_keeps_the_images_of_its_names(tmp_path):
    lines = [{"file": f"{n}.png", "k": k} for n, k in zip("abcdefg", "xyxyxyz")]
    (tmp_path / "attributes.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    folder = type("Folder", (), {"root": tmp_path})()
    curated = _set(["a.png", "b.png", "g.png"], 0)
    reference = _set([f"{n}.png" for n in "abcdefg"], 10)
    data = augment_split(folder, curated, reference, _dataset(n_test=None))
    assert data["meta"]["classes"] == ["x", "y", "z"]
    assert data["labelled"][:, 0, 0, 0].tolist() == [0, 1, 2] and data["labelled_labels"].tolist() == [0, 1, 2]
    assert data["test"][:, 0, 0, 0].tolist() == [12, 13, 14, 15] and data["test_labels"].tolist() == [0, 1, 0, 1]
    with pytest.raises(InvalidParametersError, match=r"datasets\.d\.augmentation\.labels_per_class"):
        augment_split(folder, curated, reference, _dataset(labels_per_class=2))
    with pytest.raises(InvalidParametersError, match=r"datasets\.d\.augmentation\.label_keys"):
        augment_split(folder, curated, reference, _dataset(label_keys=["colour"]))


def test_the_block_refuses_an_unknown_key():
    with pytest.raises(InvalidParametersError, match=r"datasets\.d\.augmentation\.classifier\.optimizer"):
        _dataset(classifier={"optimizer": "sgd"})
    with pytest.raises(InvalidParametersError, match=r"arch"):
        _dataset(classifier={"arch": "vit"})


def test_the_table_has_both_rows_and_says_what_was_not_run():
    row = {"n_train": 3, "accuracies": [0.5, 0.7], "mean": 0.6, "std": 0.1414}
    result = {"dataset": "d", "label_keys": ["k"], "classes": ["x", "y"], "n_classes": 2, "n_labelled": 2,
              "n_generated": 4, "n_test": 5, "test_source": "held out", "seeds": [0, 1],
              "classifier": {"arch": "resnet18", "init": "from scratch (no pretrained weights)", "steps": 3,
                             "batch_size": 8, "lr": 0.001, "weight_decay": 0.0, "hflip": True},
              "generator": {"model": "anl_d", "per_labelled": 2, "mask_rate": 0.5, "sampler": "ddim, 4 steps"},
              "rows": [{**row, "set": "labelled only (ERM)"}, {**row, "set": "+ generated (ERM)"}],
              "skipped": {"classes": {"z": 1}, "unlabelled_training": ["n.png"], "unlabelled_test": [],
                          "test_outside_classes": 1, "test_not_drawn": 0, "label_problems": []},
              "not_run": "FixMatch ... are not run"}
    table = augmentation_table(result)
    assert "| labelled only (ERM) | 3 | 60.0 ± 14.1 | 50.0, 70.0 |" in table
    assert "| + generated (ERM) | 3 |" in table and "- FixMatch ... are not run" in table
    assert "- skipped class z: 1 training image(s)" in table and "without a label line: n.png" in table


def test_only_a_dataset_declaring_the_block_gets_the_pipeline():
    from diffusion_transfer.project.config import active_parameters
    from diffusion_transfer.project.registry import register_pipelines

    pipelines = register_pipelines(active_parameters())
    pipe = pipelines["anl_augment_lsketches_1k"]
    assert "anl_lsketches_1k.finetuned_model" in pipe.inputs()  # written by anl_lsketches_1k
    assert {"anl_lsketches_1k.augmentation_report", "anl_lsketches_1k.augment_generated"} <= pipe.all_outputs()
    assert "anl_augment_aahq" not in pipelines and "anl_augment_lsketches_25" not in pipelines


# --- the smoke run: anl_lsketches_1k up to its model, then anl_augment_lsketches_1k ---------------------------


def _session_run(proj: Path, pipeline: str, to_outputs: list[str] | None = None) -> None:
    """``kedro run --env=smoke --pipeline=<pipeline> [--to-outputs ...]`` in ``proj``, in this process."""
    import os

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from diffusion_transfer.project import config

    old_cwd, old_loader = Path.cwd(), config._ACTIVE["loader"]
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env="smoke") as session:
            session.run(pipeline_names=[pipeline], to_outputs=to_outputs)
    finally:
        os.chdir(old_cwd)
        config._ACTIVE["loader"] = old_loader  # later tests read their own project's parameters


@pytest.mark.slow
def test_the_smoke_run_reports_both_rows(tmp_path):
    from safetensors.torch import load_file

    proj = _scratch_project(tmp_path)
    _session_run(proj, "anl_lsketches_1k", ["anl_lsketches_1k.finetuned_model"])
    _session_run(proj, "anl_augment_lsketches_1k")
    out = proj / SMOKE_DATA
    report = (out / "08_reporting" / "anl_lsketches_1k" / "augmentation.md").read_text()
    assert "| labelled only (ERM) |" in report and "| + generated (ERM) |" in report and "FixMatch" in report
    result = json.loads((out / "08_reporting" / "anl_lsketches_1k" / "augmentation.json").read_text())
    assert result["n_labelled"] == result["n_classes"] and result["n_generated"] == 2 * result["n_labelled"]
    assert all(len(r["accuracies"]) == 2 for r in result["rows"])
    data = load_file(str(out / "07_model_output" / "anl_augment_lsketches_1k" / "labelled_and_test.safetensors"))
    made = load_file(str(out / "07_model_output" / "anl_augment_lsketches_1k" / "generated.safetensors"))
    assert made["images"].shape[1:] == data["labelled"].shape[1:] == (32, 32, 3)  # decoded latents
    assert torch.equal(made["labels"], data["labelled_labels"][made["condition"]])  # its condition's class
    assert (out / "08_reporting" / "anl_lsketches_1k" / "augmentation_generated.png").is_file()


def test_the_paper_run_stops_before_any_compute_listing_the_classifier_weights_and_test_folder(tmp_path):
    from diffusion_transfer.project.preflight import MissingInputsError
    from tests._pipeline_helpers import PAPER_DATA, _run

    proj = _scratch_project(tmp_path)
    with pytest.raises(MissingInputsError) as err:
        _run(proj, "paper", "anl_augment_cars")
    message = str(err.value)
    for name, hint in (("datasets.cars.augmentation.classifier.weights", "data/00_weights/resnet50-0676ba61.pth"),
                       ("datasets.cars.augmentation.test_images", "data/01_raw/stanford_cars_test"),
                       ("cars_raw", "data/01_raw/stanford_cars"), ("anl_cars.finetuned_model", "anl_cars")):
        line = next((line for line in message.splitlines() if line.startswith(f"  - {name}:")), "")
        assert hint in line, (name, message)
    assert not (proj / PAPER_DATA).exists()  # nothing was written
