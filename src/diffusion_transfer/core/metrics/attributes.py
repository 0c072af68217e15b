"""FaceWorld attribute metrics over attribute dicts, e.g. those returned by the
attribute classifier (``predict_attributes``) or read from ``attributes.jsonl``.

An attribute dict looks like ``{"expression": "smile", "eyewear": "none", ...,
"is_face": True}``. A dict without ``is_face`` counts as a face (ground-truth
records). The attributes compared default to every key present in the dicts
except the bookkeeping keys ``is_face``, ``file``, ``caption`` and ``style``.

- retention: the rate at which an attribute of the source-model sample
  survives in the target-model sample generated from the same noise, over the
  pairs whose source sample is a face (a target non-face is not retained);
  optionally only for chosen source values (those the training set lacks).
- coverage: which attribute values the training set lacks, and how often
  samples show such a value (what the fine-tuned model learned or kept beyond
  its training set).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

META_KEYS = frozenset({"is_face", "file", "caption", "style"})


def _is_face(d: Mapping[str, Any]) -> bool:
    return bool(d.get("is_face", True))


def _attribute_names(dict_lists: Iterable[Sequence[Mapping[str, Any]]], attributes: Sequence[str] | None) -> list[str]:
    if attributes is not None:
        names = list(attributes)
        if not names:
            raise ValueError("attributes must name at least one attribute")
        return names
    names: list[str] = []
    seen: set[str] = set()
    for dicts in dict_lists:
        for d in dicts:
            for k in d:
                if k not in META_KEYS and k not in seen:
                    seen.add(k)
                    names.append(k)
    if not names:
        raise ValueError("no attributes found in the attribute dicts (only bookkeeping keys)")
    return names


def _check_list(attrs: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(attrs, Sequence) or isinstance(attrs, (str, bytes)):
        raise TypeError(f"{what} must be a list of attribute dicts, got {type(attrs).__name__}")
    for i, d in enumerate(attrs):
        if not isinstance(d, Mapping):
            raise TypeError(f"{what}[{i}] must be a dict, got {type(d).__name__}")
    return list(attrs)


def face_rate(attrs: Sequence[Mapping[str, Any]]) -> float:
    """Fraction of dicts with ``is_face`` True (missing counts as a face)."""
    attrs = _check_list(attrs, "attrs")
    if not attrs:
        raise ValueError("face_rate needs at least one attribute dict")
    return sum(_is_face(d) for d in attrs) / len(attrs)


def attribute_retention(
    src_attrs: Sequence[Mapping[str, Any]],
    trg_attrs: Sequence[Mapping[str, Any]],
    attributes: Sequence[str] | None = None,
    only_values: Mapping[str, Iterable[Any]] | None = None,
) -> dict[str, float]:
    """Per attribute, the fraction of pairs (src[i], trg[i]) whose source
    sample is a face and whose target sample is a face with the same value;
    plus ``"mean"`` over the attributes.

    The denominator is the number of pairs whose source sample is a face (a
    source model's failures say nothing about what fine-tuning kept).
    ``only_values`` restricts an attribute to the pairs whose source value is
    one of the given values, e.g. the values absent from the training set:
    "of the source samples with glasses, how many keep them". An attribute
    with no such pair is left out (and out of the mean)."""
    src = _check_list(src_attrs, "src_attrs")
    trg = _check_list(trg_attrs, "trg_attrs")
    if len(src) != len(trg):
        raise ValueError(f"src_attrs and trg_attrs must pair up: {len(src)} vs {len(trg)} dicts")
    if not src:
        raise ValueError("attribute_retention needs at least one pair")
    names = _attribute_names([src, trg], attributes)
    if "mean" in names:
        raise ValueError("'mean' cannot be an attribute name (it is the summary key)")
    out: dict[str, float] = {}
    for name in names:
        wanted = None if only_values is None else set(only_values.get(name, ()))
        pairs = [(s, t) for s, t in zip(src, trg)
                 if _is_face(s) and name in s and (wanted is None or s[name] in wanted)]
        if not pairs:
            continue
        kept = sum(1 for s, t in pairs if _is_face(t) and name in t and s[name] == t[name])
        out[name] = kept / len(pairs)
    if not out:
        raise ValueError("attribute_retention: no pair has a source sample that is a face"
                         + (" showing one of only_values" if only_values is not None else ""))
    out["mean"] = sum(out.values()) / len(out)
    return out


def attribute_frequencies(
    attrs: Sequence[Mapping[str, Any]], attributes: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Per attribute, the frequency of each value among the face dicts
    (values sorted by decreasing frequency; empty when there is no face)."""
    attrs = _check_list(attrs, "attrs")
    names = _attribute_names([attrs], attributes)
    faces = [d for d in attrs if _is_face(d)]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        counts = Counter(str(d[name]) for d in faces if name in d)
        total = sum(counts.values())
        out[name] = {v: c / total for v, c in counts.most_common()} if total else {}
    return out


def attribute_coverage(
    sample_attrs: Sequence[Mapping[str, Any]],
    train_attrs: Sequence[Mapping[str, Any]],
    attributes: Sequence[str] | None = None,
    vocabulary: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """How often samples show attribute values that the training set lacks.

    Returns a dict with

    - ``absent_values``: per attribute, the values absent from the (face)
      training dicts, sorted; drawn from ``vocabulary`` (e.g. FaceWorld's
      ``ATTRIBUTES``) when given, else from the values seen in samples or
      training;
    - ``absent_rate``: per attribute, the fraction of samples that are faces
      showing an absent value;
    - ``overall_rate``: the fraction of samples showing at least one absent
      value; ``mean_rate``: the mean of ``absent_rate``;
    - ``n_samples``, ``n_faces``, ``n_train``.

    Non-face samples never count as showing an absent value (the
    denominators are all samples).
    """
    samples = _check_list(sample_attrs, "sample_attrs")
    train = _check_list(train_attrs, "train_attrs")
    if not samples:
        raise ValueError("attribute_coverage needs at least one sample")
    if not train:
        raise ValueError("attribute_coverage needs a non-empty training set")
    names = _attribute_names([samples, train], attributes)
    train_faces = [d for d in train if _is_face(d)]
    sample_faces = [d for d in samples if _is_face(d)]

    absent: dict[str, list[Any]] = {}
    for name in names:
        present = {d[name] for d in train_faces if name in d}
        if vocabulary is not None and name in vocabulary:
            universe = set(vocabulary[name])
        else:
            universe = present | {d[name] for d in sample_faces if name in d}
        absent[name] = sorted(universe - present, key=str)

    absent_sets = {name: set(values) for name, values in absent.items()}
    rate: dict[str, float] = {}
    for name in names:
        hits = sum(1 for d in sample_faces if name in d and d[name] in absent_sets[name])
        rate[name] = hits / len(samples)
    any_hits = sum(
        1 for d in sample_faces if any(name in d and d[name] in absent_sets[name] for name in names)
    )
    return {
        "absent_values": absent,
        "absent_rate": rate,
        "overall_rate": any_hits / len(samples),
        "mean_rate": sum(rate.values()) / len(names),
        "n_samples": len(samples),
        "n_faces": len(sample_faces),
        "n_train": len(train),
    }
