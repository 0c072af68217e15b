"""The Inception Score: torch-fidelity's computation re-derived by hand on a
few logits, the substitute network's joint classes, the parameters (errors
name the YAML key) and the evaluate node with IS on and off. No network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_transfer.core.metrics.inception_score import (
    extract_logits,
    inception_score,
    joint_attribute_logits,
    joint_class_names,
    joint_logits,
    torch_fidelity_inception,
)
from diffusion_transfer.core.world.classifier import AttributeClassifier
from diffusion_transfer.project.schema import DatasetParams, EvaluationParams, InvalidParametersError, parse


def _by_hand(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split, after torch-fidelity's shuffle
    (numpy RandomState(2020).permutation), then mean and std over splits."""
    x = logits[np.random.RandomState(2020).permutation(len(logits))]
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(splits):
        chunk = p[i * len(p) // splits:(i + 1) * len(p) // splits]
        marginal = chunk.mean(0)
        kl = (chunk * (np.log(chunk) - np.log(marginal))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_equals_the_hand_derivation_with_torch_fidelity_splits():
    logits = np.random.default_rng(3).normal(0, 2, (23, 7))
    for splits in (1, 3, 10):
        got = inception_score(torch.from_numpy(logits), splits)
        mean, std = _by_hand(logits, splits)
        assert got["mean"] == pytest.approx(mean, rel=1e-10) and got["std"] == pytest.approx(std, rel=1e-10, abs=1e-12)
        assert got["splits"] == splits and got["n"] == 23
    # no shuffle would give another value: the shuffle is torch-fidelity's, not ignored
    assert inception_score(logits, 3)["mean"] != pytest.approx(_unshuffled(logits, 3), rel=1e-9)


def _unshuffled(logits: np.ndarray, splits: int) -> float:
    order = np.random.RandomState(2020).permutation(len(logits))
    return _by_hand(logits[np.argsort(order)], splits)[0]


def test_inception_score_bounds():
    confident = torch.eye(6) * 50  # each sample sure of its own class: IS = number of classes
    assert inception_score(confident, 1)["mean"] == pytest.approx(6, rel=1e-6)
    same = torch.zeros(6, 6)  # every sample uniform: IS = 1
    assert inception_score(same, 2)["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="inception_score_splits"):
        inception_score(same, 7)


def test_joint_logits_are_the_product_distribution_of_the_heads():
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    joint = joint_logits({"a": a, "b": b})
    assert joint.shape == (4, 6)
    expected = a.double().softmax(-1)[:, :, None] * b.double().softmax(-1)[:, None, :]
    assert torch.allclose(joint.exp(), expected.reshape(4, 6))
    assert joint_class_names({"a": ("x", "y", "z"), "b": ("u", "v")})[1] == ("x", "v")


def test_the_faceworld_substitute_is_labelled_and_gives_one_class_per_joint_value():
    attrs = {"gender": ("man", "woman"), "age": ("young", "old"), "eyewear": ("none", "glasses", "sunglasses")}
    clf = AttributeClassifier(attributes=attrs).eval()
    net = joint_attribute_logits(clf, attrs, "FaceWorld attribute classifier")
    assert net.substitute and "substitute for Inception" in net.weights and "12 classes" in net.weights
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    logits = extract_logits(net, images, batch_size=2)
    assert logits.shape == (5, 12) and torch.allclose(logits.exp().sum(1), torch.ones(5, dtype=torch.float64))


def test_torch_fidelity_inception_needs_a_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        torch_fidelity_inception(tmp_path / "absent.pth")


def test_parameters_are_validated_naming_the_yaml_key():
    with pytest.raises(InvalidParametersError, match=r"evaluation\.inception_score: Input should be a valid boolean"):
        parse(EvaluationParams, {"inception_score": "sometimes"}, "evaluation")
    with pytest.raises(InvalidParametersError, match=r"evaluation\.inception_score_splits"):
        parse(EvaluationParams, {"inception_score_splits": 0}, "evaluation")
    assert EvaluationParams().inception_score is False  # opt-in: the demo's evaluation is unchanged
    ev = EvaluationParams(inception_score=True)
    real = DatasetParams(name="cars", attributes=False)
    with pytest.raises(InvalidParametersError, match=r"'evaluation\.inception_score_weights'.*datasets\.cars"):
        ev.check_inception_score(real)
    ev.check_inception_score(DatasetParams(name="cars", attributes=False, inception_score=False))  # off for it
    ev.check_inception_score(DatasetParams(name="aahq", attributes=True))  # FaceWorld: the substitute
    assert EvaluationParams().scores_inception(DatasetParams(name="c", inception_score=True))


def test_resolve_parameters_stops_an_is_run_without_a_network():
    from diffusion_transfer.project.resolved import resolve_parameters

    params = {"sources": {"s": {"model": "m", "images": "i"}},
              "datasets": {"cars": {"source": "s", "inception_score": True}},
              "evaluation": {"inception_score_weights": None}, "train": {"steps": 1, "batch_size": 1}}
    with pytest.raises(InvalidParametersError, match="evaluation.inception_score_weights"):
        resolve_parameters(params)
    params["evaluation"]["inception_score_weights"] = "data/00_weights/x.pth"
    resolve_parameters(params)  # the file itself is the pre-run check's and the node's


def test_torch_fidelity_inception_gives_its_1008_logits_from_a_local_file(tmp_path):
    """torch-fidelity's own network on randomly initialised weights saved to a
    file (never the real ones, never downloaded): the file is read, and the
    logits are its ``logits_unbiased``."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch("torch.load", return_value={}):
        torch.manual_seed(0)
        random_net = FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                                 feature_extractor_weights_path="unused")
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(random_net.state_dict(), weights)
    net = torch_fidelity_inception(weights)
    assert not net.substitute and weights.name in net.weights
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    logits = extract_logits(net, images, batch_size=2)
    assert logits.shape == (3, 1008)
    (direct,) = random_net(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.allclose(logits, direct.double(), atol=1e-4)
