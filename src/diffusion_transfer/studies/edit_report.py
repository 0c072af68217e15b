"""The report of a study of edit runs (pipelines ``edit_<run>_<dataset>``),
such as ``edit_strength_aahq``: one row per point with each prompt's S_dir,
FaceWorld edit success, preservation and face rate (``edit_metrics.json``),
their means, and the point the selection rule picks.

The rule, fixed before any point ran (docs/EDITING.md): among the points
whose edits stay faces for every prompt (face rate >= ``FACE_RATE_FLOOR``),
the one with the highest mean edit success; ties go to the higher mean
preservation. A strength study runs on the source model, so the choice
favours no fine-tuning method; every method is then edited with it.

Written to ``<data root>/studies/<study>/``: ``study.md``, ``study.json``,
``edit_means.png`` (mean success, preservation and lowest face rate by point).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion_transfer.studies.edit_replicates import edit_replicate_table  # noqa: E402
from diffusion_transfer.studies.report_common import grid_label, report_header, save_figure  # noqa: E402
from diffusion_transfer.studies.spec import PIPELINE_AXIS, Point  # noqa: E402

FACE_RATE_FLOOR = 0.9
PLOT_FILE = "edit_means.png"
_MEASURES = ("s_dir", "success", "preservation", "face_rate")


def edit_point_row(point: Point, root: Path) -> dict[str, Any]:
    """The point's grid values and per-prompt edit metrics (``done`` False before it ran)."""
    folder = root / point.id
    row: dict[str, Any] = {"point": point.id, "pipeline": point.pipeline, "done": False,
                           "labels": {axis: grid_label(v) for axis, v in point.labels.items()}}
    metrics_path = folder / "08_reporting" / point.namespace / "edit_metrics.json"
    record_path = folder / "point.json"
    if not (record_path.is_file() and metrics_path.is_file()):
        return row
    metrics = json.loads(metrics_path.read_text())
    prompts = {name: {k: r.get(k) for k in ("label", *_MEASURES)} for name, r in metrics["rows"].items()}
    row.update(done=True, prompts=prompts, means=prompt_means(prompts),
               reconstruction=(metrics.get("reconstruction") or {}).get("retention"),
               run_seconds=json.loads(record_path.read_text()).get("run_seconds"))
    return row


def prompt_means(prompts: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each measure's mean over the prompts where it is defined (n/a prompts left out)."""
    means = {}
    for key in _MEASURES:
        values = [p[key] for p in prompts.values() if p.get(key) is not None]
        means[key] = mean(values) if values else None
    means["min_face_rate"] = min((p["face_rate"] for p in prompts.values() if p.get("face_rate") is not None),
                                 default=None)
    return means


def chosen_point(rows: list[dict[str, Any]], floor: float = FACE_RATE_FLOOR) -> str | None:
    """The selection rule (module docstring); None when no point keeps faces for every prompt."""
    eligible = [r for r in rows if r["done"] and r["means"]["min_face_rate"] is not None
                and r["means"]["min_face_rate"] >= floor and r["means"]["success"] is not None]
    if not eligible:
        return None
    best = max(eligible, key=lambda r: (r["means"]["success"], r["means"]["preservation"] or 0.0))
    return best["point"]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def edit_study_table(rows: list[dict[str, Any]], chosen: str | None) -> list[str]:
    axes = list(rows[0]["labels"]) if rows else []
    prompts = next((list(r["prompts"]) for r in rows if r["done"]), [])
    head = axes + ["mean S_dir", "mean success", "mean preservation", "min face rate"]
    head += [f"{p}: S_dir / success / pres. / faces" for p in prompts] + ["recon. retention", "chosen", "run (s)"]
    lines = ["| point | " + " | ".join(head) + " |", "|" + "---|" * (len(head) + 1)]
    for row in rows:
        values = [row["labels"][a] for a in axes]
        if not row["done"]:
            lines.append(f"| {row['point']} | " + " | ".join(values + ["not run yet"] + [""] * (len(head) - len(axes)
                                                                                            - 1)) + " |")
            continue
        m = row["means"]
        cells = values + [_fmt(m["s_dir"]), _fmt(m["success"]), _fmt(m["preservation"]), _fmt(m["min_face_rate"])]
        cells += [" / ".join(_fmt(row["prompts"][p].get(k)) for k in _MEASURES) for p in prompts]
        cells += [_fmt(row["reconstruction"]), "**yes**" if row["point"] == chosen else "",
                  _fmt(round(row["run_seconds"]) if row.get("run_seconds") is not None else None)]
        lines.append(f"| {row['point']} | " + " | ".join(cells) + " |")
    return lines


def edit_study_plot(name: str, rows: list[dict[str, Any]], chosen: str | None) -> plt.Figure:
    """Mean edit success, mean preservation and the lowest face rate, point by point."""
    done = [r for r in rows if r["done"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    xs = list(range(len(done)))
    for key, label in (("success", "mean edit success"), ("preservation", "mean preservation"),
                       ("min_face_rate", "lowest face rate over prompts")):
        ax.plot(xs, [r["means"][key] if r["means"][key] is not None else float("nan") for r in done], "o-",
                label=label)
    ax.axhline(FACE_RATE_FLOOR, ls=":", c="grey", label=f"face-rate floor {FACE_RATE_FLOOR}")
    ax.set_xticks(xs, [" ".join(r["labels"].values()) + (" (chosen)" if r["point"] == chosen else "")
                       for r in done], fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"study {name}: {len(done)} run(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_edit_study_report(name: str, points: list[Point], root: Path) -> Path:
    """Write study.md, study.json and the plot under ``root``; returns study.md's path.
    A study whose grid varies the pipeline compares models: the selection rule,
    made for a strength grid on one model, is not applied to it."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [edit_point_row(p, root) for p in points]
    picks = not any(PIPELINE_AXIS in p.labels for p in points)
    chosen = chosen_point(rows) if picks else None
    save_figure(edit_study_plot(name, rows, chosen), root / PLOT_FILE)
    rule = (f"Chosen: among the points whose edits stay faces for every prompt (face rate >= {FACE_RATE_FLOOR}), "
            "the highest mean edit success (ties: the higher mean preservation). Means are over the prompts "
            "where a measure is defined.") if picks else None
    choice = [rule, "", f"**Chosen point: {chosen or 'none (no point keeps faces for every prompt)'}**", ""]
    lines = [*report_header(name, rows, root),
             "Per prompt: S_dir (run's CLIP) / FaceWorld edit success / preservation / face rate of the edits "
             "(`edit_metrics.json`, docs/EDITING.md).", "", *(choice if picks else []),
             *edit_replicate_table(rows), *edit_study_table(rows, chosen), "",
             f"![edit means by point]({PLOT_FILE})", ""]
    (root / "study.json").write_text(json.dumps({"study": name, "chosen": chosen, "rule": rule, "rows": rows},
                                                indent=2, default=str))
    (root / "study.md").write_text("\n".join(lines))
    return root / "study.md"
