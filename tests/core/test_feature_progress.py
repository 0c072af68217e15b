"""Feature extraction shows a progress bar labelled with what it extracts,
and the bar changes nothing in the features."""

from __future__ import annotations

import numpy as np

from diffusion_transfer.core.metrics.features import cached_features, extract_features
from tests.core.test_metrics import counting_extractor, images


def test_extract_features_bar_is_labelled_and_changes_nothing(capsys):
    ex = counting_extractor([])
    plain = extract_features(ex, images(10, 0), batch_size=4)
    assert capsys.readouterr().err == ""  # no label, no bar
    labelled = extract_features(ex, images(10, 0), batch_size=4, desc="toy features")
    err = capsys.readouterr().err
    assert "toy features" in err and "0/3" in err  # three batches of 4, 4 and 2
    np.testing.assert_array_equal(plain, labelled)


def test_cached_features_names_the_extractor_and_the_set(tmp_path, capsys):
    cached_features(counting_extractor([]), images(10, 1), tmp_path, batch_size=4, prefix="ref")
    assert "toy stats features (ref, 10 images)" in capsys.readouterr().err
