"""Attribute metrics on FaceWorld attribute records: retention between paired
source and target samples (all values or chosen ones), coverage of values
absent from the training set, frequencies and the face rate."""

from __future__ import annotations

import pytest

from diffusion_transfer.core.metrics import attribute_coverage, attribute_frequencies, attribute_retention, face_rate


def face(expression: str, eyewear: str, is_face: bool = True, **extra) -> dict:
    return {"expression": expression, "eyewear": eyewear, "is_face": is_face, **extra}


def test_attribute_retention_known_answer():
    src = [face("smile", "none"), face("neutral", "glasses"), face("smile", "none"), face("sad", "none")]
    trg = [face("smile", "none"), face("smile", "glasses"), face("smile", "sunglasses", is_face=False), face("sad", "glasses")]
    r = attribute_retention(src, trg)
    # expression: pairs 0 and 3 kept (pair 2's target is a non-face) -> 2/4; eyewear: pairs 0, 1 -> 2/4.
    assert r == {"expression": 0.5, "eyewear": 0.5, "mean": 0.5}
    assert attribute_retention(src, trg, attributes=["eyewear"]) == {"eyewear": 0.5, "mean": 0.5}
    # A non-face source sample leaves the denominator: pairs 1..3 remain.
    src_nf = [face("smile", "none", is_face=False)] + src[1:]
    assert attribute_retention(src_nf, trg) == {"expression": pytest.approx(1 / 3), "eyewear": pytest.approx(1 / 3),
                                                "mean": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="no pair"):
        attribute_retention([face("smile", "none", is_face=False)], [face("smile", "none")])
    with pytest.raises(ValueError, match="pair up"):
        attribute_retention(src, trg[:3])
    with pytest.raises(ValueError, match="at least one"):
        attribute_retention([], [])


def test_attribute_retention_of_chosen_values():
    src = [face("smile", "glasses"), face("smile", "glasses"), face("neutral", "none"), face("sad", "glasses")]
    trg = [face("neutral", "glasses"), face("smile", "none"), face("neutral", "none"), face("sad", "glasses")]
    # Of the source samples with glasses (0, 1, 3), 0 and 3 keep them; of the smiles (0, 1), only 1 keeps it.
    r = attribute_retention(src, trg, only_values={"eyewear": ["glasses"], "expression": ["smile"]})
    assert r == {"expression": 0.5, "eyewear": pytest.approx(2 / 3), "mean": pytest.approx(7 / 12)}
    # An attribute with no source sample showing a chosen value is left out.
    assert attribute_retention(src, trg, only_values={"eyewear": ["sunglasses"], "expression": ["sad"]}) == {
        "expression": 1.0, "mean": 1.0}


def test_attribute_coverage_known_answer():
    train = [face("neutral", "none"), face("smile", "none"), face("neutral", "none")]
    samples = [
        face("neutral", "none"),
        face("sad", "none"),  # new expression
        face("sad", "glasses"),  # new expression and new eyewear
        face("angry", "glasses", is_face=False),  # non-faces never count
    ]
    cov = attribute_coverage(samples, train)
    assert cov["absent_values"] == {"expression": ["sad"], "eyewear": ["glasses"]}
    assert cov["absent_rate"] == {"expression": 0.5, "eyewear": 0.25}
    assert cov["overall_rate"] == 0.5
    assert cov["mean_rate"] == pytest.approx(0.375)
    assert (cov["n_samples"], cov["n_faces"], cov["n_train"]) == (4, 3, 3)

    vocab = {"expression": ["neutral", "smile", "sad", "angry"], "eyewear": ["none", "glasses", "sunglasses"]}
    cov_v = attribute_coverage(samples, train, vocabulary=vocab)
    assert cov_v["absent_values"] == {"expression": ["angry", "sad"], "eyewear": ["glasses", "sunglasses"]}
    assert cov_v["absent_rate"] == cov["absent_rate"]


def test_attribute_frequencies_and_face_rate():
    attrs = [face("smile", "none", file="a.png", caption="x"), face("smile", "glasses"),
             face("neutral", "none"), face("sad", "none", is_face=False)]
    freqs = attribute_frequencies(attrs)
    assert set(freqs) == {"expression", "eyewear"}  # bookkeeping keys are skipped
    assert freqs["expression"] == pytest.approx({"smile": 2 / 3, "neutral": 1 / 3})
    assert freqs["eyewear"] == pytest.approx({"none": 2 / 3, "glasses": 1 / 3})
    assert face_rate(attrs) == 0.75
    assert face_rate([{"expression": "smile"}]) == 1.0  # ground-truth records have no is_face
    with pytest.raises(ValueError):
        face_rate([])
