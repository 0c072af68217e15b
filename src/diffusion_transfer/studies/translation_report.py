"""A study's translation table: where a point ran its translate stage (a study
without ``outputs: [metrics]``), each translator's faithfulness and realism
(``translation_metrics.json``) over the seed replicates, per pipeline.

Each cell is mean ± sample sd [min, max] over the replicates done. For each
translator and measure, the pipeline with the best mean is marked, and another
pipeline is *separated* from it only when every replicate of the best is
better than every replicate of it (``replicates.separated``): the report's one
kind of verdict, as in the FID table above it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusion_transfer.studies.replicates import separated, spread, spread_cell
from diffusion_transfer.studies.report_common import dataset_of
from diffusion_transfer.studies.spec import REPLICATE_AXIS, Point

#: (translation_metrics.json row key, column title, lower is better)
TRANSLATION_MEASURES = [("psnr", "PSNR", False), ("ssim", "SSIM", False), ("lpips", "LPIPS-substitute", True),
                        ("fid", "FID", True), ("kid_x1e3", "KID x10^3", True), ("retention", "retention", False)]


def translation_rows(points: list[Point], root: Path) -> list[dict[str, Any]]:
    """Per done point with a translation stage: its pipeline, its other grid values and its translators' rows."""
    rows = []
    for point in points:
        path = root / point.id / "08_reporting" / point.namespace / "translation_metrics.json"
        if (root / point.id / "point.json").is_file() and path.is_file():
            labels = {a: str(v) for a, v in point.labels.items() if a not in (REPLICATE_AXIS, "pipeline")}
            rows.append({"pipeline": point.pipeline, "labels": labels,
                         "translators": json.loads(path.read_text())["rows"]})
    return rows


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, list[float]]]]:
    """(translator, other grid values, pipeline) -> measure -> the replicates' values."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for row in rows:
        for translator, values in row["translators"].items():
            key = (translator, tuple(row["labels"].items()), row["pipeline"])
            group = groups.setdefault(key, {})
            for measure, _, _ in TRANSLATION_MEASURES:
                if values.get(measure) is not None:
                    group.setdefault(measure, []).append(float(values[measure]))
    return groups


def _cell(s: dict[str, Any], digits: int, mark: str) -> str:
    return f"{mark}{spread_cell(s, digits)}{mark} (n={s['n']})"


def translation_table(points: list[Point], root: Path) -> list[str]:
    """Markdown lines of the table (none when no done point translated)."""
    rows = translation_rows(points, root)
    if not rows:
        return []
    stats = {key: {m: spread(v) for m, v in values.items()} for key, values in _groups(rows).items()}
    measures = [m for m in TRANSLATION_MEASURES if any(m[0] in values for values in stats.values())]
    axes = list(rows[0]["labels"])
    lines = ["## Translation over seed replicates", "",
             "Each translator's faithfulness (PSNR, SSIM, LPIPS-substitute: input against translation) and "
             "realism (FID, KID against the target set; attribute retention) from `translation_metrics.json`: "
             "mean ± sample sd [min, max] (n replicates). Bold: the best mean of a translator's pipelines of one "
             "dataset; "
             "*separated*: every replicate of the best is better than every replicate of the other pipeline.", "",
             "| translator | " + " | ".join(axes + ["pipeline"] + [t for _, t, _ in measures])
             + " | separated from the best on |", "|" + "---|" * (len(axes) + len(measures) + 3)]
    for (translator, labels, pipeline), s in stats.items():
        rivals = [v for (t, lab, other), v in stats.items()  # one dataset: the same FID reference
                  if t == translator and lab == labels and dataset_of(other) == dataset_of(pipeline)]
        cells, verdicts = [], []
        for measure, title, lower in measures:
            if measure not in s:
                cells.append("")
                continue
            scored = [r[measure] for r in rivals if measure in r]
            best = (min if lower else max)(scored, key=lambda x: x["mean"])
            cells.append(_cell(s[measure], 2 if measure in ("psnr", "fid", "kid_x1e3") else 3,
                               "**" if best is s[measure] and len(scored) > 1 else ""))
            if best is not s[measure] and separated(best, s[measure], lower):
                verdicts.append(title)
        lines.append(f"| {translator} | " + " | ".join([v for _, v in labels] + [pipeline] + cells)
                     + f" | {', '.join(verdicts)} |")
    return lines + [""]
