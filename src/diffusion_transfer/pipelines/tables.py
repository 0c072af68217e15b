"""Tables and names that several stages share: a run's report and the
comparison of every run write the same translation and edit tables, and the
registry, the edit stage and the comparison name the source model's edit run
alike. Stages import them from here, never from one another's ``nodes.py``."""

from __future__ import annotations

from typing import Any

from diffusion_transfer.core.translation.registry import translator_label

#: ``edit_source_<dataset>``: Asyrp on the source (pretrained) model, the
#: baseline row of the Table 2 analogue.
SOURCE_RUN = "source"

#: "success without f_t": the unedited reconstruction's success, the baseline the edit's own is read against
_EDIT_COLUMNS = (("S_dir ↑", "s_dir"), ("ID ↑", "identity"), ("success ↑", "success"),
                 ("success without f_t", "reconstruction_success"), ("preservation ↑", "preservation"))


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: a float to ``digits`` decimals, None as "n/a"."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def translation_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per translation method."""
    rows = metrics["rows"]
    has_attrs = any("retention" in r for r in rows.values())
    has_id = any("identity" in r for r in rows.values())
    head = "| translation | PSNR ↑ | SSIM ↑ | LPIPS ↓ | FID ↓ | KID x1e3 ↓ |" + (" ID ↑ |" if has_id else "") + \
        (" attribute retention ↑ | face rate |" if has_attrs else "") + " wall |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, r in rows.items():
        cells = [translator_label(name), f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", f"{r['lpips']:.3f}",
                 f"{r['fid']:.2f}", f"{r['kid_x1e3']:.2f}"]
        if has_id:
            cells.append(f"{r['identity']:.3f}" if "identity" in r else "n/a")
        if has_attrs:
            cells += [f"{r.get('retention', float('nan')):.3f}", f"{r.get('face_rate', float('nan')):.3f}"]
        cells.append(f"{r['seconds']:.0f} s" if r.get("seconds") is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def edit_table(metrics_by_method: dict[str, dict[str, Any]]) -> list[str]:
    """SDFT Table 2 as markdown lines: first the mean over prompts per method
    (Table 2's layout), then one row per method with each prompt's S_dir, ID
    where measured and FaceWorld edit success / preservation where measured
    ("n/a" where a prompt has no value)."""
    if not metrics_by_method:
        return ["(no edit metrics)"]
    rows_all = [m["rows"] for m in metrics_by_method.values()]
    prompts = list(dict.fromkeys(p for rows in rows_all for p in rows))
    labels = {p: next(rows[p].get("label", p) for rows in rows_all if p in rows) for p in prompts}
    cols = [(h, k) for h, k in _EDIT_COLUMNS if any(k in r for rows in rows_all for r in rows.values())]
    cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731  (every value, ints too, to 3 decimals)
    lines = ["| method | " + " | ".join(f"mean {h}" for h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, m in metrics_by_method.items():
        means = [_mean([r.get(k) for r in m["rows"].values()]) for _, k in cols]
        lines.append(f"| {method} | " + " | ".join(cell(v) for v in means) + " |")
    head = [f"{labels[p]} {h}" for p in prompts for h, _ in cols]
    lines += ["", "| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for method, m in metrics_by_method.items():
        cells = [cell(m["rows"].get(p, {}).get(k)) for p in prompts for _, k in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines
