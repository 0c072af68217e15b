"""The Asyrp edit stage (pipelines/edit/): a smoke run of its nodes on a
tiny UNet writes a grid per prompt and the metrics; parameters and wiring."""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from diffusion_transfer.core.methods.a3ft import prepare_a3ft
from diffusion_transfer.core.models import build_unet
from diffusion_transfer.core.world.classifier import AttributeClassifier
from diffusion_transfer.pipelines.edit.nodes import (
    apply_edits,
    edit_grids,
    evaluate_edits,
    load_directions,
    select_edit_inputs,
    train_edit_directions,
)
from diffusion_transfer.project.schema_editing import EditingParams
from diffusion_transfer.pipelines.edit.pipeline import create_edit_pipeline
from diffusion_transfer.project.resolved import ResolvedDataset
from diffusion_transfer.project.schema import DatasetParams, EvaluationParams, InvalidParametersError, parse
from diffusion_transfer.project.schema_editing import editing_for

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8, norm_num_groups=4,
)
EDITING = {
    "prompts": {"smiling": {"source": ["an expressionless man"], "target": ["a smiling man"]},
                "angry": {"source": ["an expressionless man"], "target": ["a frowning man"], "epochs": 1,
                          "label": "angry (FaceWorld: frowning)"}},
    "n_train": 2, "n_test": 3, "epochs": 1, "train_steps": 4, "inversion_steps": 4, "steps": 4,
    "t_edit": 0.5, "t_boost": 0.2, "lr": 0.05, "grid_inputs": 2,
}

#: As nodes receive it: resolved before the run (project/resolved.py).
EDITING_PARAMS = editing_for(EDITING)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see tests/conftest.py


class HashClip:
    """CLIP-like stand-in: E_I = normalise(channel means + 1), E_T = a fixed
    random unit vector per text (seeded by its CRC32)."""

    weights_label = "hash clip (test stand-in)"
    name = "hash-clip"

    def encode_images(self, x):
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
        return F.normalize(x.float().mean(dim=(2, 3)) + 1.0, dim=-1)

    def encode_text(self, texts):
        rows = [torch.randn(3, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return F.normalize(torch.stack(rows), dim=-1)


def reference(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randint(0, 256, (n, 8, 8, 3), dtype=torch.uint8, generator=g), "meta": {}}


@pytest.mark.parametrize("kind", ["plain", "a3ft"])
def test_smoke_edit_run_writes_grids_and_metrics(tmp_path, kind):
    from kedro_datasets.json import JSONDataset
    from kedro_datasets.partitions import PartitionedDataset

    torch.manual_seed(0)
    model = build_unet(TINY).eval()
    if kind == "a3ft":
        model = prepare_a3ft(copy.deepcopy(model)).eval()
    clip, classifier = HashClip(), AttributeClassifier(widths=(8, 8, 8), image_size=8).eval()
    inputs = select_edit_inputs(reference(), EDITING_PARAMS)
    assert inputs["train"].shape == (2, 8, 8, 3) and inputs["test"].shape == (3, 8, 8, 3)
    assert not set(inputs["meta"]["train_index"]) & set(inputs["meta"]["test_index"])
    directions = train_edit_directions(model, inputs, clip, EDITING_PARAMS, {})
    assert directions["meta"]["t_edit"] == 500 and directions["meta"]["t_boost"] == 200
    assert len(directions["meta"]["prompts"]["angry"]["history"]) == 2  # 1 epoch x 2 images
    f_t = load_directions(directions, "smiling")
    assert f_t.conv2.weight.abs().sum() > 0  # trained off its zero start
    edits = apply_edits(model, directions, inputs, EDITING_PARAMS, {})
    assert set(edits) >= {"inputs", "reconstructed", "smiling", "angry"}
    assert edits["smiling"].shape == (3, 8, 8, 3) and edits["smiling"].dtype == torch.uint8
    assert not torch.equal(edits["smiling"], edits["reconstructed"])
    dataset = ResolvedDataset.of(DatasetParams(name="faceworld_test", attributes=True, faces=True),
                                 editing=EDITING_PARAMS)
    evaluation = EvaluationParams(attributes=True)
    metrics = evaluate_edits(edits, clip, classifier, evaluation, EDITING_PARAMS, dataset)
    rows = metrics["rows"]
    assert set(rows) == {"smiling", "angry"} and -1.0 <= rows["smiling"]["s_dir"] <= 1.0
    assert rows["angry"]["success"] is None and rows["angry"]["attribute"].startswith("n/a")
    assert rows["smiling"]["attribute"] == "expression" and "identity" not in rows["smiling"]
    assert metrics["weights"]["s_dir"] == "hash clip (test stand-in)"
    assert metrics["settings"]["f_t"] == {"lr": 0.05, "epochs": 1, "train_steps": 4, "n_train": 2}  # what trained f_t
    assert metrics["environment"]["torch"] == torch.__version__ and metrics["environment"]["commit"]  # the edit's own
    # the no-edit baseline: an "edit" that is the reconstruction scores exactly the baseline
    unedited = evaluate_edits({**edits, "smiling": edits["reconstructed"]}, clip, classifier, evaluation,
                              EDITING_PARAMS, dataset)["rows"]["smiling"]
    assert unedited["s_dir"] == unedited["reconstruction_s_dir"] == rows["smiling"]["reconstruction_s_dir"]
    assert unedited["success"] == unedited["reconstruction_success"] == rows["smiling"]["reconstruction_success"]
    assert rows["smiling"]["s_dir"] != rows["smiling"]["reconstruction_s_dir"]  # the trained f_t edits
    assert "reconstruction_success" not in rows["angry"]  # no FaceWorld attribute to read
    grids = edit_grids(edits, EDITING_PARAMS)
    assert set(grids) == {"smiling", "angry"}
    assert grids["smiling"].size[1] == 2 * (16 + 2)  # inputs row + edits row, 2x scale
    PartitionedDataset(path=str(tmp_path / "edits"), dataset="pillow.ImageDataset", filename_suffix=".png").save(grids)
    JSONDataset(filepath=str(tmp_path / "edit_metrics.json")).save(metrics)
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == ["angry.png", "smiling.png"]
    assert json.loads((tmp_path / "edit_metrics.json").read_text())["rows"]["angry"]["label"] == \
        "angry (FaceWorld: frowning)"


def test_editing_parameters_validate_and_name_the_parameter():
    base = yaml.safe_load((ROOT / "conf/base/parameters_editing.yml").read_text())["editing"]
    p = parse(EditingParams, base, "editing")
    assert list(p.prompts) == ["smiling", "sad", "angry", "young", "old"]  # SDFT Table 2
    assert [p.asyrp_config(k, 500).epochs for k in p.prompts] == [5, 3, 3, 5, 3]  # SDFT app. E
    with pytest.raises(InvalidParametersError, match="editing"):
        parse(EditingParams, {**EDITING, "t_boost": 0.6}, "editing")
    with pytest.raises(InvalidParametersError, match=r"editing\.prompts\.smiling"):
        parse(EditingParams, {**EDITING, "prompts": {"smiling": {"source": ["a", "b"], "target": ["c", "d", "e"]}}},
              "editing")
    # a dataset smaller than n_train + n_test (2 + 3) is split in the same proportion, not a late failure
    small = select_edit_inputs(reference(4), EDITING_PARAMS)["meta"]
    assert (small["n_train"], small["n_test"], small["requested"]) == (2, 2, {"n_train": 2, "n_test": 3})
    assert set(small["train_index"]).isdisjoint(small["test_index"])
    with pytest.raises(InvalidParametersError, match="at least 2 images"):
        select_edit_inputs(reference(1), EDITING_PARAMS)


def test_edit_pipeline_lives_in_the_run_namespace_and_has_catalog_entries():
    pipe = create_edit_pipeline("sdft", "aahq", {"source_model": "source_model"})
    assert pipe.inputs() == {"sdft_aahq.finetuned_model", "aahq_reference", "evaluation_clip",
                             "attribute_classifier", "params:editing", "params:schedule", "params:evaluation",
                             "params:datasets.aahq"}
    outputs = pipe.all_outputs()
    assert outputs >= {"sdft_aahq.edit_grids", "sdft_aahq.edit_metrics", "aahq_edit_inputs"}
    assert "condition_clip" in create_edit_pipeline("anl", "aahq", {}).inputs()
    patterns = yaml.safe_load((ROOT / "conf/base/catalog_editing.yml").read_text())
    for name in ("{dataset}_edit_inputs", "{run}.edit_directions", "{run}.edits", "{run}.edit_metrics",
                 "{run}.edit_grids"):
        assert name in patterns
    with pytest.raises(ValueError, match="unknown method"):
        create_edit_pipeline("nope", "aahq", {})


def test_edit_table_by_hand():
    from diffusion_transfer.pipelines.tables import edit_table

    m = {"sdft": {"rows": {"smiling": {"label": "smiling", "s_dir": 0.1234, "success": 0.5, "preservation": 0.75},
                           "angry": {"label": "angry", "s_dir": 0.2, "success": None, "preservation": None}}},
         "naive": {"rows": {"smiling": {"label": "smiling", "s_dir": 0.05, "success": 0.25, "preservation": 1.0},
                            "angry": {"label": "angry", "s_dir": -0.1, "success": None, "preservation": None}}}}
    lines = edit_table(m)
    # means over prompts (Table 2's layout); None (no FaceWorld attribute) is left out of the mean
    assert lines[0] == "| method | mean S_dir ↑ | mean success ↑ | mean preservation ↑ |"
    assert lines[2] == f"| sdft | {(0.1234 + 0.2) / 2:.3f} | 0.500 | 0.750 |"
    assert lines[3] == f"| naive | {(0.05 - 0.1) / 2:.3f} | 0.250 | 1.000 |"
    assert lines[5] == ("| method | smiling S_dir ↑ | smiling success ↑ | smiling preservation ↑ | angry S_dir ↑ | "
                        "angry success ↑ | angry preservation ↑ |")
    assert lines[7] == "| sdft | 0.123 | 0.500 | 0.750 | 0.200 | n/a | n/a |"
    assert lines[8] == "| naive | 0.050 | 0.250 | 1.000 | -0.100 | n/a | n/a |"
    # with the no-edit baseline recorded, it stands beside the success it is read against
    m["sdft"]["rows"]["smiling"]["reconstruction_success"] = 0.125
    lines = edit_table(m)
    assert lines[0] == "| method | mean S_dir ↑ | mean success ↑ | mean success without f_t | mean preservation ↑ |"
    assert lines[2] == f"| sdft | {(0.1234 + 0.2) / 2:.3f} | 0.500 | 0.125 | 0.750 |"
    assert lines[3] == f"| naive | {(0.05 - 0.1) / 2:.3f} | 0.250 | n/a | 1.000 |"


def test_dataset_editing_block_overrides_the_editing_block():
    """SDFT app. E edits 500 MetFaces / 400 AAHQ test images: ``datasets.<d>.editing`` merges over ``editing``."""
    from diffusion_transfer.project.schema_editing import editing_for

    dataset = {"name": "aahq", "editing": {"n_test": 2, "prompts": {"angry": {"source": ["x"], "target": ["y"]}}}}
    p = editing_for(EDITING, dataset)
    assert (p.n_test, p.n_train) == (2, EDITING["n_train"])
    assert p.prompts["angry"].target == ["y"] and p.prompts["angry"].label is None  # that prompt replaced whole
    assert p.prompts["smiling"].target == ["a smiling man"]  # the others kept
    resolved = ResolvedDataset.of(DatasetParams(**dataset), editing=p)
    assert select_edit_inputs(reference(4), EDITING_PARAMS, resolved)["meta"]["n_test"] == 2  # 2 + 2 <= 4: no error
    with pytest.raises(InvalidParametersError, match=r"datasets\.aahq\.editing"):
        editing_for(EDITING, {"name": "aahq", "editing": {"n_test": 0}})


def test_source_model_edit_pipeline_reads_the_source_model():
    """``edit_source_<dataset>``: the baseline row edits the pretrained model, in the namespace source_<dataset>."""
    pipe = create_edit_pipeline("source", "aahq", {"source_model": "ffhq_model"})
    assert "ffhq_model" in pipe.inputs() and not any(i.endswith("finetuned_model") for i in pipe.inputs())
    assert pipe.all_outputs() >= {"source_aahq.edit_metrics", "source_aahq.edit_grids"}
