"""Seed replicates in a study report: a grid axis named ``replicate`` (each
value a training seed with its sampling seed) makes one group of every other
combination of grid values, summarised by its mean, sample standard
deviation and range over the replicates done.

A difference between two groups is taken as a verdict only where their ranges
do not overlap (every replicate of one is better than every replicate of the
other); the table marks each group so against the best of its cohort: the
groups that differ only in their pipeline's method (the same dataset, hence
the same FID reference)."""

from __future__ import annotations

import statistics
from typing import Any

from diffusion_transfer.studies.report_common import dataset_of
from diffusion_transfer.studies.spec import REPLICATE_AXIS, namespace_of
#: (metrics.json key, column title, lower is better)
MEASURES = [("fid", "FID", True), ("kid_x1e3", "KID x10^3", True), ("inception_score", "IS", False),
            ("face_rate", "face rate", False), ("clip_score", "CLIP score", False),
            ("retention_of_absent_concepts.mean", "absent concepts kept (mean)", False),
            ("intra_lpips", "intra-LPIPS", False), ("source.fid", "source model's FID", True)]
#: Measures shown with more than two decimals: few-shot diversity differs in the third.
DIGITS = {"intra_lpips": 3}


def replicate_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per combination of the non-replicate grid values (in grid
    order), with each measure's values over the done replicates."""
    groups: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        labels = {a: v for a, v in row["labels"].items() if a != REPLICATE_AXIS}
        group = groups.setdefault(tuple(labels.items()), {"labels": labels, "replicates": [], "values": {}})
        if not row["done"]:
            continue
        group["replicates"].append(row["labels"].get(REPLICATE_AXIS))
        for key, _, _ in MEASURES:
            value = row["metrics"].get(key)
            if value is not None:
                group["values"].setdefault(key, []).append(float(value))
    return list(groups.values())


def spread(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (None for one value), min, max and n."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def separated(a: dict[str, Any], b: dict[str, Any], lower_is_better: bool) -> bool:
    """Whether every replicate of ``a`` beats every replicate of ``b`` (both of
    two or more replicates): the only difference the report calls a verdict."""
    if a["n"] < 2 or b["n"] < 2:
        return False
    return a["max"] < b["min"] if lower_is_better else a["min"] > b["max"]


def cohort_of(labels: dict[str, Any]) -> tuple:
    """What a group is compared within: its other grid values and its pipeline's
    dataset (an edit run's: that of the run it edits)."""
    return tuple((a, dataset_of(namespace_of(str(v))) if a == "pipeline" else v) for a, v in labels.items())


def spread_cell(s: dict[str, Any] | None, digits: int = 2) -> str:
    """A :func:`spread` as tables show it: mean ± sd [min, max] ("" for none)."""
    if s is None:
        return ""
    std = "n/a" if s["std"] is None else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def replicate_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: mean ± sd [min, max] per group and measure, and FID
    against the group of lowest mean FID (*separated* when the ranges do not
    overlap); no lines when the grid has no ``replicate`` axis."""
    if not rows or REPLICATE_AXIS not in rows[0]["labels"]:
        return []
    groups = replicate_groups(rows)
    measures = [m for m in MEASURES if any(m[0] in g["values"] for g in groups)]
    stats = [{key: spread(g["values"][key]) for key, _, _ in measures if g["values"].get(key)} for g in groups]
    cohorts = [cohort_of(g["labels"]) for g in groups]
    best: dict[tuple, dict[str, Any]] = {}
    for cohort, s in zip(cohorts, stats):
        if "fid" in s and (cohort not in best or s["fid"]["mean"] < best[cohort]["mean"]):
            best[cohort] = s["fid"]
    axes = list(groups[0]["labels"])
    lines = ["## Over seed replicates", "",
             "Mean ± sample standard deviation [min, max] over the replicates done (n). *Against the best FID* of the "
             "same dataset (and other grid values): "
             "*separated* when every replicate of the best group has a lower FID than every replicate of this one "
             "(a verdict); *within noise* when the ranges overlap; no verdict on one replicate.", "",
             "| " + " | ".join(axes + ["n"] + [title for _, title, _ in measures] + ["against the best FID"]) + " |",
             "|" + "---|" * (len(axes) + len(measures) + 2)]
    for group, cohort, s in zip(groups, cohorts, stats):
        fid, top = s.get("fid"), best.get(cohort)
        verdict = "" if fid is None or top is None else "best" if fid is top else \
            "one replicate: no verdict" if min(fid["n"], top["n"]) < 2 else \
            "separated" if separated(top, fid, True) else "within noise"
        cells = [str(group["labels"][a]) for a in axes] + [str(len(group["replicates"]))]
        cells += [spread_cell(s.get(key), DIGITS.get(key, 2)) for key, _, _ in measures] + [verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
