"""Class labels of an image folder and the semi-supervised split of ANL's
Table 2 (``labels_per_class`` labelled images per class, a held-out test set).

Labels come from a JSONL file, one ``{"file": name, <key>: value, ...}`` per
line (FaceWorld's ``attributes.jsonl``, or e.g. ``{"file": ..., "class": ...}``
for a real dataset); an image's class is the tuple of its ``label_keys``
values. Nothing is dropped silently: lines that cannot be read, images without
a label, and classes with too few training images are all returned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LabelledSplit", "class_name", "per_condition", "read_labels", "labelled_split"]

Class = tuple[str, ...]


def class_name(label: Class) -> str:
    """A class as one string (``glasses/long``)."""
    return "/".join(label)


def read_labels(path: str | Path, label_keys: Sequence[str]) -> tuple[dict[str, Class], list[tuple[str, str]]]:
    """``{file: class}`` from the JSONL file ``path``, and ``(line, reason)``
    for each line that is not a JSON object with a ``file`` and every key."""
    path, keys = Path(path), list(label_keys)
    labels: dict[str, Class] = {}
    problems: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            problems.append((where, f"not valid JSON ({err})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            problems.append((where, "not an object with a 'file' name"))
            continue
        absent = [k for k in keys if record.get(k) is None]
        if absent:
            problems.append((where, f"{record['file']} has no {', '.join(absent)}"))
            continue
        labels[record["file"]] = tuple(str(record[k]) for k in keys)
    return labels, problems


@dataclass(frozen=True)
class LabelledSplit:
    """The kept classes (sorted; a label is an index into them), the labelled
    training images and the test images with their labels, and what was left out."""

    classes: list[Class]
    labelled: list[str]
    labelled_labels: list[int]
    test: list[str]
    test_labels: list[int]
    #: class -> its training images, for each class with fewer than labels_per_class
    skipped_classes: dict[Class, int] = field(default_factory=dict)
    #: training / test images without a usable label line
    unlabelled_training: list[str] = field(default_factory=list)
    unlabelled_test: list[str] = field(default_factory=list)
    #: labelled test images of a class that is not kept (skipped, or absent from training)
    test_outside_classes: int = 0
    #: labelled test images beyond n_test, left out by the seeded draw
    test_not_drawn: int = 0

    def record(self) -> dict[str, Any]:
        """JSON-ready: names, labels and what was left out."""
        return {"classes": [class_name(c) for c in self.classes], "labelled": self.labelled,
                "labelled_labels": self.labelled_labels, "test": self.test, "test_labels": self.test_labels,
                "skipped_classes": {class_name(c): n for c, n in self.skipped_classes.items()},
                "unlabelled_training": self.unlabelled_training, "unlabelled_test": self.unlabelled_test,
                "test_outside_classes": self.test_outside_classes, "test_not_drawn": self.test_not_drawn}


def labelled_split(training: Sequence[str], test_pool: Sequence[str], labels: dict[str, Class], per_class: int,
                   n_test: int | None = None, seed: int = 0) -> LabelledSplit:
    """``per_class`` training images of every class that has that many (a
    seeded draw, each class's in input order), and the labelled images of
    ``test_pool`` whose class is kept, at most ``n_test`` (a seeded draw, in
    input order). The two never share a name."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    by_class: dict[Class, list[str]] = {}
    for name in training:
        if name in labels:
            by_class.setdefault(labels[name], []).append(name)
    classes = sorted(c for c, names in by_class.items() if len(names) >= per_class)
    picked: dict[str, int] = {}
    for k, c in enumerate(classes):
        chosen = np.sort(rng.choice(len(by_class[c]), per_class, replace=False))
        picked.update({by_class[c][i]: k for i in chosen})
    labelled = [n for n in training if n in picked]
    index = {c: k for k, c in enumerate(classes)}
    seen = set(training)
    labelled_test = [n for n in test_pool if n in labels and n not in seen]
    test = [n for n in labelled_test if labels[n] in index]
    drawn = test
    if n_test is not None and len(test) > n_test:
        keep = set(np.sort(rng.choice(len(test), n_test, replace=False)).tolist())
        drawn = [n for i, n in enumerate(test) if i in keep]
    return LabelledSplit(
        classes=classes, labelled=labelled, labelled_labels=[picked[n] for n in labelled], test=drawn,
        test_labels=[index[labels[n]] for n in drawn],
        skipped_classes={c: len(v) for c, v in sorted(by_class.items()) if c not in index},
        unlabelled_training=[n for n in training if n not in labels],
        unlabelled_test=[n for n in test_pool if n not in labels and n not in seen],
        test_outside_classes=len(labelled_test) - len(test), test_not_drawn=len(test) - len(drawn))


def per_condition(labels: Sequence[int], per_labelled: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``per_labelled`` generated images per labelled image: the index of
    each generated image's condition (0, 0, ..., 1, 1, ...) and its label, the condition's."""
    condition = np.repeat(np.arange(len(labels), dtype=np.int64), per_labelled)
    return condition, np.asarray(labels, dtype=np.int64)[condition]
