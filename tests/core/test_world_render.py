"""FaceWorld renderer and domains: determinism, visible attributes, biases, I/O."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from diffusion_transfer.core.world.domains import (
    DOMAINS,
    DomainSpec,
    read_records,
    render_batch,
    render_domain,
)
from diffusion_transfer.core.world.captions import caption, caption_variants
from diffusion_transfer.core.world.render import (
    ATTRIBUTES,
    STYLES,
    FaceAttributes,
    render_face,
    render_non_face,
    sample_attributes,
)

BASE = dict(
    skin_tone="light",
    hair_colour="brown",
    hair_style="short",
    expression="neutral",
    eyewear="none",
    gender="man",
    age="young",
    background="plain",
)


def face(style="photo", **kw) -> FaceAttributes:
    return FaceAttributes(**{**BASE, **kw}, style=style)


def test_attribute_tables():
    assert ATTRIBUTES["expression"] == ("neutral", "smile", "grin", "sad")
    assert ATTRIBUTES["eyewear"] == ("none", "glasses", "sunglasses")
    assert STYLES == ("photo", "portrait", "artwork", "sketch")
    with pytest.raises(ValueError, match="eyewear"):
        face(eyewear="monocle")
    a = face("sketch", expression="grin")
    assert FaceAttributes.from_dict({**a.to_dict(), "file": "x.png"}) == a


@pytest.mark.parametrize("style", STYLES)
def test_render_shape_dtype_and_determinism(style):
    a = face(style)
    x = render_face(a, size=32, seed=3)
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, render_face(a, size=32, seed=3))
    assert not np.array_equal(x, render_face(a, size=32, seed=4))  # seed-driven jitter
    assert x.std() > 10  # not blank
    assert render_face(a, size=48, seed=3).shape == (48, 48, 3)


def test_sketch_is_greyscale_and_styles_differ():
    sk = render_face(face("sketch"), seed=1).astype(int)
    assert np.array_equal(sk[..., 0], sk[..., 1]) and np.array_equal(sk[..., 1], sk[..., 2])
    imgs = {s: render_face(face(s), seed=1).astype(float) for s in STYLES}
    for s in STYLES:
        for t in STYLES:
            if s < t:
                assert np.abs(imgs[s] - imgs[t]).mean() > 10, (s, t)
    # portrait background is dark, sketch paper is light
    assert imgs["portrait"][:3, :3].mean() < 70
    assert imgs["sketch"][:3, :3].mean() > 200


def _band_diff(a: np.ndarray, b: np.ndarray, box: tuple[slice, slice]) -> float:
    return float(np.abs(a[box].astype(float) - b[box].astype(float)).mean())


# regions at 32x32, face jitter included
EYES = (slice(11, 18), slice(6, 26))
MOUTH = (slice(20, 26), slice(9, 23))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", [0, 7])
def test_eyewear_changes_eye_region_only(style, seed):
    none = render_face(face(style), seed=seed)
    for eyewear in ("glasses", "sunglasses"):
        other = render_face(face(style, eyewear=eyewear), seed=seed)
        assert _band_diff(none, other, EYES) > 10, eyewear
        assert _band_diff(none, other, MOUTH) < 3.0, eyewear
    # sunglasses are darker than bare eyes or see-through glasses in the eye band
    sun = render_face(face(style, eyewear="sunglasses"), seed=seed)[EYES].mean()
    gl = render_face(face(style, eyewear="glasses"), seed=seed)[EYES].mean()
    assert sun < gl < none[EYES].mean() + 1


@pytest.mark.parametrize("style", STYLES)
def test_expression_changes_mouth_region_only(style):
    base = render_face(face(style), seed=5)
    for expr, min_diff in (("smile", 4), ("grin", 15), ("sad", 8)):
        other = render_face(face(style, expression=expr), seed=5)
        assert _band_diff(base, other, MOUTH) > min_diff, expr
        assert _band_diff(base, other, EYES) < 1.0, expr
    grin = render_face(face(style, expression="grin"), seed=5)
    # the grin shows a bright band of teeth
    assert grin[MOUTH].max() > base[MOUTH].max() - 5


def _mouth_curve(expr: str) -> tuple[int, int]:
    """(row of the mouth line at its centre, row near its corner) at 64x64."""
    img = render_face(face(expression=expr), size=64, seed=2).astype(float)
    lum = img @ np.array([0.299, 0.587, 0.114])
    region = lum[40:56, 16:48]  # below the nose, around the mouth
    dark = region < np.median(region) - 40
    cols = np.nonzero(dark.any(0))[0]
    assert len(cols) >= 8, expr  # a mouth several pixels wide
    mid, edge = (cols.min() + cols.max()) // 2, cols.min() + 1
    return int(np.argmin(region[:, mid])), int(np.argmin(region[:, edge]))


def test_smile_and_sad_are_mirror_curves():
    """Smile: corners above the middle of the mouth; sad: below; neutral: level."""
    mid, edge = _mouth_curve("smile")
    assert edge < mid - 1
    mid, edge = _mouth_curve("sad")
    assert edge > mid + 1
    mid, edge = _mouth_curve("neutral")
    assert abs(edge - mid) <= 1


def test_attribute_changes_all_visible():
    a = face("photo")
    ref = render_face(a, seed=11)
    for attr, values in ATTRIBUTES.items():
        for v in values:
            if v == getattr(a, attr):
                continue
            other = render_face(FaceAttributes(**{**a.to_dict(), attr: v}), seed=11)
            assert np.abs(ref.astype(float) - other).mean() > 0.5, (attr, v)


def test_sample_attributes_uniform_and_probs():
    rng = np.random.default_rng(0)
    counts = Counter(sample_attributes(rng, "photo").eyewear for _ in range(900))
    assert set(counts) == set(ATTRIBUTES["eyewear"])
    assert all(200 < c < 400 for c in counts.values())
    rng = np.random.default_rng(1)
    got = {sample_attributes(rng, "photo", {"eyewear": {"sunglasses": 1}}).eyewear for _ in range(50)}
    assert got == {"sunglasses"}
    with pytest.raises(ValueError, match="invalid style"):
        sample_attributes(rng, "watercolour")


@pytest.mark.parametrize(
    "probs, word",
    [
        ({"hat": {"yes": 1.0}}, "hat"),
        ({"eyewear": {"monocle": 1.0}}, "eyewear"),
        ({"expression": {"smile": -0.5, "neutral": 1.0}}, "expression"),
        ({"expression": {"smile": 0.0}}, "expression"),
        ({"gender": "man"}, "gender"),
    ],
)
def test_invalid_probs_raise_naming_attribute(probs, word):
    with pytest.raises(ValueError, match=word):
        sample_attributes(np.random.default_rng(0), "photo", probs)


def test_metfaces_bias_and_exact_zeros():
    spec = DOMAINS["faceworld_metfaces"]
    assert spec.style == "portrait" and spec.n_images == 400
    rng = np.random.default_rng(123)
    attrs = [sample_attributes(rng, spec.style, spec.probs) for _ in range(400)]
    expr = Counter(a.expression for a in attrs)
    eye = Counter(a.eyewear for a in attrs)
    skin = Counter(a.skin_tone for a in attrs)
    assert expr["smile"] == 0 and expr["grin"] == 0
    assert eye["sunglasses"] == 0
    assert set(skin) <= {"pale", "light"}
    assert 0.85 <= expr["neutral"] / 400 <= 0.95
    assert 1 <= eye["glasses"] <= 40  # ~4% of 400
    # the domain renderer honours the same spec
    _, batch = render_batch("faceworld_metfaces", 400, size=8, seed=0)
    assert not {a.expression for a in batch} & {"smile", "grin"}
    assert "sunglasses" not in {a.eyewear for a in batch}


def test_domain_table():
    assert set(DOMAINS) >= {
        "faceworld_ffhq", "faceworld_metfaces", "faceworld_aahq",
        "faceworld_sunglasses", "faceworld_sketches",
    }
    assert DOMAINS["faceworld_ffhq"].style == "photo" and DOMAINS["faceworld_ffhq"].n_images == 4000
    assert DOMAINS["faceworld_aahq"].style == "artwork" and DOMAINS["faceworld_aahq"].n_images == 3000
    assert DOMAINS["faceworld_sketches"].style == "sketch"
    _, attrs = render_batch("faceworld_sunglasses", 30, size=8)
    assert {a.eyewear for a in attrs} == {"sunglasses"}
    with pytest.raises(ValueError, match="expression"):
        DomainSpec("bad", "photo", 10, {"expression": {"laugh": 1.0}})


def test_captions_exact():
    assert (
        caption(face("portrait", expression="neutral", eyewear="none", gender="man"))
        == "a realistic painting of an expressionless man without glasses"
    )
    assert caption(face("photo", expression="smile", eyewear="glasses", gender="woman")) == (
        "a photo of a smiling woman with glasses"
    )
    assert caption(face("artwork", expression="grin", eyewear="sunglasses")) == (
        "an artwork of a grinning man with sunglasses"
    )
    assert caption(face("sketch", expression="sad", gender="woman")) == (
        "a pencil sketch of a sad woman without glasses"
    )


def test_caption_variants_keep_key_information():
    rng = np.random.default_rng(0)
    expr_words = {
        "neutral": ("expressionless", "neutral", "serious", "straight-faced"),
        "smile": ("smiling", "happy"),
        "grin": ("grinning", "laughing"),
        "sad": ("sad", "unhappy", "frowning"),
    }
    gender_words = {"man": ("man", "male", "guy"), "woman": ("woman", "female", "lady")}
    eyewear_words = {"none": ("no glasses", "without glasses", "no eyewear"),
                     "glasses": ("with glasses", "wearing glasses", "spectacles"),
                     "sunglasses": ("sunglasses", "shades")}
    seen = set()
    for _ in range(200):
        a = sample_attributes(rng, STYLES[int(rng.integers(4))])
        text = caption_variants(a, rng)
        seen.add(text)
        assert any(w in text for w in expr_words[a.expression]), text
        assert any(f" {w}" in text for w in gender_words[a.gender]), text
        assert any(w in text for w in eyewear_words[a.eyewear]), text
        if a.eyewear == "glasses":
            assert "sunglasses" not in text and "no glasses" not in text
    assert len(seen) > 150  # genuinely varied


def test_render_non_face():
    rng = np.random.default_rng(0)
    imgs = [render_non_face(rng, 32) for _ in range(20)]
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in imgs)
    assert len({x.tobytes() for x in imgs}) == 20
    a = [render_non_face(np.random.default_rng(5), 32) for _ in range(2)]
    assert np.array_equal(a[0], a[1])


def test_render_domain_writes_and_is_idempotent(tmp_path):
    out = tmp_path / "ffhq"
    got = render_domain("faceworld_ffhq", out, size=16, n=12, seed=3, progress=False)
    assert got == out
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(12)]
    recs = read_records(out)
    assert len(recs) == 12
    for i, r in enumerate(recs):
        assert r["file"] == f"{i:05d}.png"
        assert r["style"] == "photo"
        a = FaceAttributes.from_dict(r)
        assert r["caption"] == caption(a)
        assert set(ATTRIBUTES) <= set(r)
    img = np.asarray(Image.open(out / "00004.png"))
    assert img.shape == (16, 16, 3)

    # in-memory variant gives the same pixels and attributes
    batch, attrs = render_batch("faceworld_ffhq", 12, size=16, seed=3)
    assert np.array_equal(batch[4], img)
    assert [a.to_dict() for a in attrs] == [FaceAttributes.from_dict(r).to_dict() for r in recs]

    # second call is a no-op: files untouched
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    render_domain("faceworld_ffhq", out, size=16, n=12, seed=3, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert json.loads((out / "world.json").read_text())["n"] == 12

    # deterministic: another folder, byte-identical PNGs; no temp dirs left behind
    out2 = tmp_path / "again"
    render_domain("faceworld_ffhq", out2, size=16, n=12, seed=3, progress=False)
    for name in pngs:
        assert (out / name).read_bytes() == (out2 / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "ffhq"]

    # other settings replace the render
    render_domain("faceworld_ffhq", out, size=16, n=5, seed=3, progress=False)
    assert len(list(out.glob("*.png"))) == 5 and len(read_records(out)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "ffhq"]


def test_render_domain_refuses_foreign_folder_and_cleans_up(tmp_path, monkeypatch):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        render_domain("faceworld_sketches", foreign, size=8, n=2, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    # a crash mid-render leaves no output folder and no temp folder
    import diffusion_transfer.core.world.domains as dom

    calls = {"n": 0}
    real = dom.render_face

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(dom, "render_face", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        render_domain("faceworld_sketches", tmp_path / "sk", size=8, n=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_read_records_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="attributes.jsonl"):
        read_records(tmp_path)
