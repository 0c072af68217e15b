"""Every file a stage skips is listed with its reason in the stage's summary
and in the report, and any environment's settings run on your own folders
(issue 18, with tests/test_failures.py).

The folder is the researcher's own of tests/test_own_data.py (12 target PNGs
at 80x80, 16 source PNGs, a tiny 64x64 model, the ``mydata`` environment),
spoiled with the kinds of file the issue measured; the stages run through
the real ``kedro`` command line."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.test_failures import TARGET
from tests.test_own_data import README, kedro, own_data_project

SOURCE = Path("data/01_raw/my_source_images")


def _spoil(folder: Path) -> None:
    """A broken symbolic link, an undecodable PNG, images one folder down."""
    (folder / "zz_link.png").symlink_to(folder / "gone.png")
    (folder / "bad.png").write_bytes(np.random.default_rng(0).integers(0, 256, 900, dtype=np.uint8).tobytes())
    (folder / "more").mkdir()
    Image.new("RGB", (80, 80), (9, 9, 9)).save(folder / "more" / "extra.png")


def test_curation_lists_every_skipped_file_and_sidecar_mismatch(tmp_path):
    proj = own_data_project(tmp_path)
    folder = proj / TARGET
    _spoil(folder)
    # attributes.jsonl: every image but img_000.png, a record of an absent file, an unusable line
    lines = [json.dumps({"file": p.name, "gender": "man"}) for p in sorted(folder.glob("img_*.png"))[1:]]
    lines += [json.dumps({"file": "gone_too.png"}), "{not json"]
    (folder / "attributes.jsonl").write_text("\n".join(lines) + "\n")

    done = kedro(proj, "run", "--pipeline=curate_mydata", "--env=mydata")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    summary = json.loads((proj / "data/mydata/08_reporting/curate_mydata/summary.json").read_text())
    assert summary["counts"]["kept"] == 12 and summary["counts"]["skipped_invalid"] == 3
    skipped = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert skipped["zz_link.png"] == f"broken symbolic link: its target {folder / 'gone.png'} does not exist"
    assert skipped["bad.png"] == "truncated or corrupt image: cannot identify image format"
    assert skipped["more"].startswith("a sub-folder (1 file(s) inside): sub-folders are not read")
    sidecar = summary["sidecar"]
    assert sidecar["images_without_record"] == ["img_000.png"]
    assert sidecar["records_without_image"] == ["gone_too.png"]
    assert [u["file"] for u in sidecar["unusable_lines"]] == ["attributes.jsonl line 13"]
    assert "the records are not used" in sidecar["effect"]

    # the run's report.md says the same (build_report adds these lines under "Curation")
    from diffusion_transfer.pipelines.skipped_files import skipped_file_lines

    report = "\n".join(skipped_file_lines(summary))
    assert f"Curation ({TARGET}) skipped 3 file(s): `bad.png`: truncated or corrupt image" in report
    assert "`zz_link.png`: broken symbolic link" in report and "`more`: a sub-folder" in report
    assert "1 image(s) without a record (img_000.png), 1 record(s) of absent files (gone_too.png), " \
           "1 unusable line(s)" in report


def test_translation_inputs_list_the_source_images_they_skipped(tmp_path):
    """The translate stage draws its inputs from the source images: the files
    it could not use reach translation_metrics.json and the report."""
    from diffusion_transfer.datasets import ImageFolderDataset
    from diffusion_transfer.pipelines.skipped_files import skipped_file_lines, skipped_records
    from diffusion_transfer.pipelines.translate.nodes import select_translation_inputs
    from diffusion_transfer.project.schema import TranslationParams

    folder = tmp_path / "source"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (32, 32), (i, i, i)).save(folder / f"s{i}.png")
    _spoil(folder)
    model = SimpleNamespace(config=SimpleNamespace(sample_size=32))
    inputs = select_translation_inputs(ImageFolderDataset(str(folder)).load(), model,
                                       TranslationParams(n_inputs=4, seed=0))
    assert inputs["images"].shape[0] == 4
    metrics = {"inputs_folder": inputs["meta"]["folder"], "skipped_inputs": skipped_records(inputs["meta"]["skipped"])}
    assert sorted(s["file"] for s in metrics["skipped_inputs"]) == ["bad.png", "more", "zz_link.png"]
    lines = skipped_file_lines({"folder": "x", "skipped": []}, metrics)
    assert lines[-1].startswith(f"Translation inputs ({folder}) skipped 3 file(s): ")
    assert "`bad.png`: truncated or corrupt" in lines[-1] and "`zz_link.png`: broken symbolic link" in lines[-1]
    assert "`more`: a sub-folder" in lines[-1]


@pytest.mark.slow
def test_the_classifier_report_lists_unusable_source_images(tmp_path):
    proj = own_data_project(tmp_path)
    _spoil(proj / SOURCE)
    done = kedro(proj, "run", "--pipeline=classifier_mydata", "--env=mydata")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    report = json.loads((proj / "data/mydata/08_reporting/classifier_mydata/report.json").read_text())
    assert report["source_folder"] == str(SOURCE)
    skipped = {s["file"]: s["reason"] for s in report["skipped_source_images"]}
    assert set(skipped) == {"bad.png", "more", "zz_link.png"} and skipped["bad.png"].startswith("truncated")


# --- any environment's settings on your own folders (conf/README.md) -------------------------------


def _readme_block(marker: str) -> str:
    text = README.read_text()
    body = text[text.index(f"<!-- {marker} -->"):text.index(f"<!-- /{marker} -->")]
    return re.search(r"```\w*\n(.*?)```", body, re.S).group(1)


def test_smoke_settings_on_your_own_folders_from_the_command_line(tmp_path):
    """conf/README.md's command, with curate_mydata for sdft_mydata (the same
    declaration and settings, without the training): smoke's settings and
    data root, your folders, and conf/mydata not read."""
    proj = own_data_project(tmp_path)
    (proj / "conf" / "mydata" / "parameters.yml").unlink()  # only the command line declares mydata
    args = shlex.split(_readme_block("own-data-any-env-params").strip())[1:]
    assert "--env=smoke" in args and "--pipeline=sdft_mydata" in args
    args[args.index("--pipeline=sdft_mydata")] = "--pipeline=curate_mydata"
    done = kedro(proj, *args)
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    summary = json.loads((proj / "data/smoke/08_reporting/curate_mydata/summary.json").read_text())
    assert summary["folder"] == str(TARGET) and summary["counts"]["kept"] == 12


def test_any_environment_on_your_own_folders_from_a_run_config_file(tmp_path):
    """conf/README.md's run file: ``kedro run --config=<file>`` with the
    environment, the pipeline and your folders as parameters."""
    proj = own_data_project(tmp_path)
    (proj / "conf" / "mydata" / "parameters.yml").unlink()
    (proj / "my_smoke_run.yml").write_text(_readme_block("own-data-any-env-file"))
    command = shlex.split(_readme_block("own-data-any-env-command").strip())[1:]
    assert command == ["run", "--config=my_smoke_run.yml"]
    import yaml

    run = yaml.safe_load((proj / "my_smoke_run.yml").read_text())["run"]
    assert run["env"] == "smoke" and run["pipelines"] == "sdft_mydata"
    done = kedro(proj, *command, "--pipelines=curate_mydata")  # the command line wins over the file
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    summary = json.loads((proj / "data/smoke/08_reporting/curate_mydata/summary.json").read_text())
    assert summary["folder"] == str(TARGET) and summary["counts"]["kept"] == 12


def test_an_environment_of_your_own_with_a_copy_of_the_settings(tmp_path):
    """conf/README.md's copy: smoke's parameters.yml beside a file holding only the declaration."""
    import yaml

    proj = own_data_project(tmp_path)
    declared = yaml.safe_load((proj / "conf" / "mydata" / "parameters.yml").read_text())
    (proj / "my_declaration.yml").write_text(yaml.safe_dump({k: declared[k] for k in ("sources", "datasets")}))
    commands = [shlex.split(line) for line in _readme_block("own-data-any-env-copy").strip().splitlines()]
    for command in commands[:-1]:
        assert command[0] in ("mkdir", "cp")
        subprocess.run(command, cwd=proj, check=True)
    run = commands[-1][1:]
    assert run == ["run", "--env=mysmoke", "--pipeline=sdft_mydata"]
    done = kedro(proj, "run", "--env=mysmoke", "--pipeline=curate_mydata")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    summary = json.loads((proj / "data/mysmoke/08_reporting/curate_mydata/summary.json").read_text())
    assert summary["folder"] == str(TARGET) and summary["counts"]["kept"] == 12
