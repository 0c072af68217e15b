"""A study's report: one row per point (its grid values and its run's
``metrics.json``), a plot of FID against the retention of the attribute
values absent from the training set, one point per run, with the Pareto
front marked (lower FID and higher retention are better; a run is on the
front when no other run is at least as good on both and better on one).

Written to ``<data root>/studies/<study>/``: ``study.md``, ``study.json``,
``fid_vs_retention.png``. Points not run yet are listed as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion_transfer.studies.edit_report import write_edit_study_report  # noqa: E402
from diffusion_transfer.studies.replicates import replicate_table  # noqa: E402
from diffusion_transfer.studies.report_common import grid_label, report_header, save_figure  # noqa: E402
from diffusion_transfer.studies.spec import Point  # noqa: E402
from diffusion_transfer.studies.translation_report import translation_table  # noqa: E402
from diffusion_transfer.tracking.records import evaluation_metrics  # noqa: E402

X_KEY, Y_KEY = "retention_of_absent.mean", "fid"
#: A text-to-image run's retention: of the source's samples of each absent-concept prompt that show
#: the concept, the share whose fine-tuned sample (same seed) does (pipelines/evaluate/nodes.py).
TEXT_X_KEY = "retention_of_absent_concepts.mean"
#: (metric key, column title) of the table, after the grid values.
COLUMNS = [("fid", "FID"), ("kid_x1e3", "KID x10^3"), (X_KEY, "absent values kept (mean)"),
           ("retention.mean", "retention (mean)"), ("lpips_src_trg", "LPIPS src-trg"),
           ("coverage.overall_rate", "coverage of absent values"), ("face_rate", "face rate")]
#: A few-shot run's diversity (datasets.<name>.intra_lpips), a column only where a run measured it.
INTRA_LPIPS_COLUMN = ("intra_lpips", "intra-LPIPS")
#: A text-to-image run's columns in place of the pixel runs' attribute ones.
TEXT_COLUMNS = [("fid", "FID"), ("kid_x1e3", "KID x10^3"), ("clip_score", "CLIP score"),
                (TEXT_X_KEY, "absent concepts kept (mean)"), ("absent_face_rate", "face rate (absent prompts)")]


def is_text_to_image(rows: list[dict[str, Any]]) -> bool:
    """Whether the study's done runs are text-to-image runs (their metrics.json has no attribute retention)."""
    done = [r for r in rows if r["done"]]
    return bool(done) and all(X_KEY not in r["metrics"] and TEXT_X_KEY in r["metrics"] for r in done)
PLOT_FILE = "fid_vs_retention.png"


def point_row(point: Point, root: Path) -> dict[str, Any]:
    """The point's grid values and metrics (``done`` False before it ran)."""
    folder = root / point.id
    row: dict[str, Any] = {"point": point.id, "pipeline": point.pipeline,
                           "labels": {axis: grid_label(v) for axis, v in point.labels.items()}, "done": False}
    metrics_path = folder / "08_reporting" / point.namespace / "metrics.json"
    record_path = folder / "point.json"
    if not (record_path.is_file() and metrics_path.is_file()):
        return row
    metrics = json.loads(metrics_path.read_text())
    record = json.loads(record_path.read_text())
    absent = (metrics.get("training_set_attributes") or {}).get("absent_values") or {}
    row.update(done=True, metrics=evaluation_metrics(metrics), absent_values=absent,
               run_seconds=record.get("run_seconds"), reused_shared_from=record.get("shared", {}).get("reused_from"))
    return row


def pareto_front(rows: list[dict[str, Any]], x_key: str = X_KEY) -> set[str]:
    """Ids of the done rows no other row dominates (FID lower, retention higher)."""
    scored = [(r["point"], r["metrics"].get(Y_KEY), r["metrics"].get(x_key)) for r in rows if r["done"]]
    scored = [(p, f, k) for p, f, k in scored if f is not None and k is not None]
    front = set()
    for p, f, k in scored:
        dominated = any(f2 <= f and k2 >= k and (f2 < f or k2 > k) for q, f2, k2 in scored if q != p)
        if not dominated:
            front.add(p)
    return front


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _absent_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    attrs: dict[str, list[str]] = {}
    for row in rows:
        for attr, values in (row.get("absent_values") or {}).items():
            attrs.setdefault(attr, values)
    return [(f"retention_of_absent.{a}", f"{', '.join(v)} kept") for a, v in attrs.items()]


def study_table(rows: list[dict[str, Any]], front: set[str]) -> list[str]:
    axes = list(rows[0]["labels"]) if rows else []
    columns = TEXT_COLUMNS if is_text_to_image(rows) else COLUMNS[:3] + _absent_columns(rows) + COLUMNS[3:]
    if any(r["done"] and INTRA_LPIPS_COLUMN[0] in r["metrics"] for r in rows):
        columns = columns + [INTRA_LPIPS_COLUMN]
    lines = ["| point | " + " | ".join(axes + [title for _, title in columns]) + " | Pareto | run (s) |",
             "|" + "---|" * (len(axes) + len(columns) + 3)]
    for row in rows:
        values = [row["labels"][a] for a in axes]
        if not row["done"]:
            lines.append(f"| {row['point']} | " + " | ".join(values + ["not run yet"] + [""] * (len(columns) + 1))
                         + " |")
            continue
        m = row["metrics"]
        cells = values + [_fmt(m.get(key), 2 if key in ("fid", "kid_x1e3") else 3) for key, _ in columns]
        cells += ["**yes**" if row["point"] in front else "", _fmt(row.get("run_seconds"), 0)]
        lines.append(f"| {row['point']} | " + " | ".join(cells) + " |")
    return lines


def _near_labels(spans: list[float], at: tuple[float, float], placed: list[tuple[float, float]]) -> int:
    """How many labels already placed lie within a few percent of the axes' ``spans`` of ``at``."""
    return sum(abs(px - at[0]) < 0.08 * spans[0] and abs(py - at[1]) < 0.05 * spans[1] for px, py in placed)


def study_plot(name: str, rows: list[dict[str, Any]], front: set[str], x_key: str = X_KEY) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    done = [r for r in rows if r["done"] and r["metrics"].get(x_key) is not None and r["metrics"].get(Y_KEY)
            is not None]
    placed: list[tuple[float, float]] = []
    spans = [max(r["metrics"][k] for r in done) - min(r["metrics"][k] for r in done) or 1.0
             for k in (x_key, Y_KEY)] if done else [1.0, 1.0]
    for row in done:
        x, y = row["metrics"][x_key], row["metrics"][Y_KEY]
        on_front = row["point"] in front
        ax.scatter([x], [y], s=60 if on_front else 30, c="tab:red" if on_front else "tab:blue", zorder=3)
        near = _near_labels(spans, (x, y), placed)  # runs that land on each other get their labels stacked
        placed.append((x, y))
        ax.annotate(" ".join(row["labels"].values()), (x, y), fontsize=7, xytext=(4, 3 - 9 * near),
                    textcoords="offset points")
    line = sorted((r["metrics"][x_key], r["metrics"][Y_KEY]) for r in done if r["point"] in front)
    if line:
        ax.plot([p[0] for p in line], [p[1] for p in line], "--", c="tab:red", label="Pareto front", zorder=2)
    sources = {r["metrics"].get("source.fid") for r in done} - {None}
    if len(sources) == 1:
        ax.axhline(sources.pop(), ls=":", c="grey", label="source model's FID")
    ax.set_xlabel("retention of " + ("prompted concepts" if x_key == TEXT_X_KEY else "attribute values")
                  + " absent from the training set (mean, higher is better)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"study {name}: {len(done)} run(s)")
    if line or ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_study_report(name: str, points: list[Point], root: Path) -> Path:
    """Write study.md, study.json and the plot under ``root``; returns study.md's path.
    A study of edit runs gets the edit report (``edit_report.py``)."""
    if points and all(p.is_edit for p in points):
        return write_edit_study_report(name, points, root)
    root.mkdir(parents=True, exist_ok=True)
    rows = [point_row(p, root) for p in points]
    x_key = TEXT_X_KEY if is_text_to_image(rows) else X_KEY
    front = pareto_front(rows, x_key)
    save_figure(study_plot(name, rows, front, x_key), root / PLOT_FILE)
    lines = [*report_header(name, rows, root), "Metrics of the fine-tuned model (`metrics.json`): FID/KID against the "
             "target data; *kept*: of the source samples showing an attribute value absent from the training set, "
             "the share whose fine-tuned sample (same noise) still shows it. Pareto: no other run has both a lower "
             "or equal FID and a higher or equal retention of absent values (one of them strictly).", "",
             *replicate_table(rows), *translation_table(points, root), *study_table(rows, front), "",
             f"![FID against retention of absent values]({PLOT_FILE})", ""]
    sources = {r["metrics"].get("source.fid") for r in rows if r["done"]} - {None}
    if sources:
        lines.insert(6, f"The source (pretrained) model's FID: {', '.join(_fmt(s, 2) for s in sorted(sources))}.")
        lines.insert(7, "")
    (root / "study.json").write_text(json.dumps({"study": name, "pareto_front": sorted(front), "rows": rows},
                                                indent=2, default=str))
    (root / "study.md").write_text("\n".join(lines))
    return root / "study.md"
