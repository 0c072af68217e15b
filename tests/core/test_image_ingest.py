"""Ingest validation (core/data/images.py): which files are listed, kept,
converted or skipped with a reason, centre crop and resize, clear errors for
empty and all-bad folders, tensor round trips and atomic PNG writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_transfer.core.data.images import (
    IngestResult,
    ImageFolderError,
    ingest_images,
    list_image_files,
    save_png_atomic,
    to_tensor,
    to_uint8,
)

# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def _solid(colour, size=(40, 40), mode="RGB"):
    return Image.new(mode, size, colour)


@pytest.fixture
def messy_folder(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    _solid((255, 0, 0)).save(d / "a_good.png")
    _solid((0, 255, 0), (48, 48)).save(d / "b_good.png")
    _solid((0, 0, 255), (50, 40)).save(d / "c_photo.jpg", quality=95)
    rng = np.random.default_rng(0)
    (d / "d_corrupt.png").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    data = buf.getvalue()
    (d / "e_truncated.png").write_bytes(data[: len(data) // 2])
    _solid(100, mode="L").save(d / "f_gray.png")
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent black ...
    rgba[:, :20] = (255, 0, 0, 255)  # ... except an opaque red left half
    Image.fromarray(rgba, mode="RGBA").save(d / "g_rgba.png")
    _solid((10, 20, 30), (8, 8)).save(d / "h_tiny.png")
    (d / "i_notes.txt").write_text("not an image")
    _solid((0, 0, 0, 0), mode="CMYK").save(d / "j_cmyk.jpg")  # CMYK white
    (d / "k_empty.png").write_bytes(b"")
    # never listed: hidden files, sidecars; listed as skipped: a sub-folder, a broken symbolic link
    (d / ".DS_Store").write_bytes(b"\0\1")
    (d / "attributes.jsonl").write_text("{}\n")
    (d / "world.json").write_text("{}")
    (d / "sub").mkdir()
    _solid((1, 2, 3)).save(d / "sub" / "nested.png")
    (d / "l_link.png").symlink_to(d / "gone.png")
    return d


# ---------------------------------------------------------------------------
# images.py
# ---------------------------------------------------------------------------


def test_list_image_files_filters_and_sorts(messy_folder):
    names = [p.name for p in list_image_files(messy_folder)]
    assert names == sorted(names)
    assert "i_notes.txt" in names and "d_corrupt.png" in names
    for hidden in (".DS_Store", "attributes.jsonl", "world.json", "nested.png"):
        assert hidden not in names
    assert "sub" in names and "l_link.png" in names  # for ingest_images to list as skipped
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files(messy_folder / "nope")


def test_ingest_keeps_converts_and_lists_skips(messy_folder):
    res = ingest_images(messy_folder, resolution=32)
    assert isinstance(res, IngestResult)
    assert res.names == ["a_good.png", "b_good.png", "c_photo.jpg", "f_gray.png", "g_rgba.png", "j_cmyk.jpg"]
    assert res.images.shape == (6, 32, 32, 3) and res.images.dtype == np.uint8
    skipped = dict(res.skipped)
    assert set(skipped) == {"d_corrupt.png", "e_truncated.png", "h_tiny.png", "i_notes.txt", "k_empty.png",
                            "l_link.png", "sub"}
    assert skipped["k_empty.png"] == "empty file"
    assert skipped["l_link.png"] == f"broken symbolic link: its target {messy_folder / 'gone.png'} does not exist"
    assert skipped["sub"].startswith("a sub-folder (1 file(s) inside): sub-folders are not read")
    assert skipped["d_corrupt.png"].startswith("truncated or corrupt image")
    assert skipped["e_truncated.png"].startswith("truncated or corrupt image: ")
    assert "truncated" in skipped["e_truncated.png"].split(": ", 1)[1]
    assert skipped["h_tiny.png"] == "too small: 8x8 < 32"
    assert skipped["i_notes.txt"] == "not an image file"

    img = dict(zip(res.names, res.images))
    assert np.all(img["a_good.png"] == (255, 0, 0))
    assert np.all(img["f_gray.png"] == 100)  # grayscale -> RGB, same value
    rgba = img["g_rgba.png"].astype(int)
    assert np.all(rgba[:, :14] == (255, 0, 0))  # opaque red stays red
    assert np.all(rgba[:, 18:] == 255)  # transparent composited on white, not black
    assert np.all(img["j_cmyk.jpg"] >= 250)  # CMYK (0,0,0,0) is white
    assert np.abs(img["c_photo.jpg"].astype(int) - (0, 0, 255)).max() <= 3
    notes = dict(res.notes)
    assert "L" in notes["f_gray.png"] and "white" in notes["g_rgba.png"] and "CMYK" in notes["j_cmyk.jpg"]
    assert "a_good.png" not in notes
    images, names, skipped_list = res  # unpacks as the architecture's triple
    assert names == res.names and skipped_list == res.skipped


def test_ingest_min_size_and_file_list(messy_folder):
    res = ingest_images([messy_folder / "h_tiny.png", messy_folder / "a_good.png"], resolution=16, min_size=8)
    assert res.names == ["h_tiny.png", "a_good.png"] and res.images.shape == (2, 16, 16, 3)
    assert np.all(res.images[0] == (10, 20, 30))
    with pytest.raises(ValueError, match="min_size"):
        ingest_images([messy_folder / "a_good.png"], min_size=0)


def test_ingest_palette_transparency_and_16bit(tmp_path):
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    arr16 = np.full((32, 32), 32896, dtype=np.uint16)  # 0.502 of 65535
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    res = ingest_images(tmp_path, resolution=32)
    img = dict(zip(res.names, res.images))
    assert np.all(img["pal.png"][:, :16] == (0, 255, 0)) and np.all(img["pal.png"][:, 16:] == 255)
    assert np.all(np.abs(img["deep.png"].astype(int) - 128) <= 1)  # scaled, not clipped to 255


def test_centre_crop_and_antialiased_resize(tmp_path):
    wide = np.zeros((64, 96, 3), dtype=np.uint8)
    wide[:, :16] = (0, 0, 255)
    wide[:, 16:80] = (0, 255, 0)
    wide[:, 80:] = (255, 0, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tall = np.zeros((48, 32, 3), dtype=np.uint8)
    tall[8:40] = 200
    Image.fromarray(tall).save(tmp_path / "tall.png")
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker] * 3, -1)).save(tmp_path / "z_checker.png")
    res = ingest_images(tmp_path, resolution=32)
    img = dict(zip(res.names, res.images.astype(int)))
    assert np.abs(img["wide.png"] - (0, 255, 0)).max() <= 2  # the side bands are cropped away
    assert np.all(img["tall.png"] == 200)
    assert np.abs(img["z_checker.png"] - 127.5).max() < 20  # antialiased: grey, not aliased stripes


def test_empty_and_all_bad_folders_raise_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        ingest_images(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("x")
    (bad / "b.txt").write_text("y")
    _solid((1, 1, 1), (4, 4)).save(bad / "c.png")
    with pytest.raises(ValueError, match=r"all 3 files were skipped.*not an image file \(2\).*too small \(1\)"):
        ingest_images(bad)
    # a list of files (what the pipelines pass) names their folder, each file and the size needed
    with pytest.raises(ImageFolderError) as err:
        ingest_images(sorted(bad.iterdir()), resolution=32)
    assert f"no usable images in {bad}:" in str(err.value)
    assert "c.png: too small: 4x4 < 32" in str(err.value) and "at least 32x32 pixels" in str(err.value)


def test_tensor_round_trip_and_atomic_png(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = to_tensor(arr)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), arr)
    assert to_uint8(torch.full((1, 3, 2, 2), 5.0)).max() == 255  # clamped
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(arr.astype(np.float32))
    out = save_png_atomic(arr[0], tmp_path / "deep" / "x.png")
    assert np.array_equal(np.asarray(Image.open(out)), arr[0])
    assert [p.name for p in out.parent.iterdir()] == ["x.png"]  # no temp file left behind
