"""An edit study's table over seed replicates (``editing_aahq``: Asyrp on
each fine-tuned model of training seeds 0-2): per pipeline, each measure's
mean ± sample sd [min, max] over the replicates done.

Measures: the means over the prompts of S_dir, FaceWorld edit success and
preservation, the lowest face rate, the unedited reconstruction's attribute
retention, and each prompt's edit success. Higher is better for all. For each
measure the pipeline with the best mean of its dataset is bold, and another
is *separated* from it only when every replicate of the best is better than
every replicate of it: the one verdict the study reports make."""

from __future__ import annotations

from typing import Any

from diffusion_transfer.studies.replicates import cohort_of, separated, spread, spread_cell
from diffusion_transfer.studies.spec import REPLICATE_AXIS

#: (row measure, column title), all higher-is-better; each prompt's success follows.
EDIT_MEASURES = [("s_dir", "mean S_dir"), ("success", "mean edit success"), ("preservation", "mean preservation"),
                 ("min_face_rate", "lowest face rate"), ("reconstruction", "recon. retention")]


def _values(row: dict[str, Any]) -> dict[str, float | None]:
    """A done edit row's measures (``edit_report.edit_point_row``)."""
    values = {key: row["means"].get(key) for key, _ in EDIT_MEASURES if key != "reconstruction"}
    values["reconstruction"] = row.get("reconstruction")
    values.update({f"prompt:{p}": r.get("success") for p, r in row["prompts"].items()})
    return values


def edit_replicate_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per combination of the non-replicate grid values, with each
    measure's values over its done replicates."""
    groups: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        labels = {a: v for a, v in row["labels"].items() if a != REPLICATE_AXIS}
        group = groups.setdefault(tuple(labels.items()), {"labels": labels, "n": 0, "values": {}})
        if not row["done"]:
            continue
        group["n"] += 1
        for key, value in _values(row).items():
            if value is not None:
                group["values"].setdefault(key, []).append(float(value))
    return list(groups.values())


def edit_replicate_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the table; none when the grid has no ``replicate`` axis."""
    if not rows or REPLICATE_AXIS not in rows[0]["labels"]:
        return []
    groups = edit_replicate_groups(rows)
    keys = EDIT_MEASURES + [(k, f"{k.removeprefix('prompt:')} success") for k in _prompt_order(rows)]
    keys = [(k, t) for k, t in keys if any(k in g["values"] for g in groups)]
    stats = [{k: spread(v) for k, v in g["values"].items()} for g in groups]
    cohorts = [cohort_of(g["labels"]) for g in groups]
    axes = list(groups[0]["labels"])
    lines = ["## Over seed replicates", "",
             "Mean ± sample sd [min, max] over the replicates done (n). Bold: the best mean of the dataset's "
             "pipelines; *separated*: every replicate of the best is better than every replicate of this one.", "",
             "| " + " | ".join(axes + ["n"] + [t for _, t in keys] + ["separated from the best on"]) + " |",
             "|" + "---|" * (len(axes) + len(keys) + 2)]
    for group, cohort, s in zip(groups, cohorts, stats):
        cells, verdicts = [str(group["labels"][a]) for a in axes] + [str(group["n"])], []
        for key, title in keys:
            rivals = [other[key] for other, c in zip(stats, cohorts) if c == cohort and key in other]
            if key not in s:
                cells.append("")
                continue
            best = max(rivals, key=lambda x: x["mean"])
            mark = "**" if best is s[key] and len(rivals) > 1 else ""
            cells.append(f"{mark}{spread_cell(s[key], 3)}{mark}")
            if best is not s[key] and separated(best, s[key], lower_is_better=False):
                verdicts.append(title)
        lines.append("| " + " | ".join(cells + [", ".join(verdicts)]) + " |")
    return lines + [""]


def _prompt_order(rows: list[dict[str, Any]]) -> dict[str, None]:
    """``prompt:<name>`` keys in the order the done rows list their prompts."""
    return {f"prompt:{p}": None for r in rows if r["done"] for p in r["prompts"]}
