"""``compare_<dataset>``: every method on one protocol, one table.

The method runs are the ordinary ``<method>_<dataset>`` pipelines (they share
the curated set, the noise bank and the source samples); this module only
adds the node that reads their metrics and writes the comparison."""

from __future__ import annotations

from typing import Any

from diffusion_transfer.core.translation.registry import translator_label
from diffusion_transfer.pipelines.shortfall import shortfall_lines
from diffusion_transfer.pipelines.tables import SOURCE_RUN, edit_table, fmt

_COLUMNS = (
    ("FID", "fid", 2),
    ("KID (x10^3)", "kid_x1e3", 2),
    ("LPIPS src-trg", "lpips_src_trg", 3),
    ("intra-LPIPS", "intra_lpips", 3),
    ("face rate", "face_rate", 3),
    ("retention (mean)", "retention_mean", 3),
    ("kept absent values (mean)", "kept_absent_mean", 3),
    ("absent-value rate", "coverage_rate", 3),
    ("trainable params (% of source)", "trainable_percent", 2),
)
HISTORY_PREFIX = "history_"
TRANSLATION_PREFIX = "translation_"
EDIT_PREFIX = "edit_"
_SOURCE_ROW = "source (pretrained)"


def _row(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "fid": model.get("fid"),
        "kid_x1e3": model.get("kid_x1e3"),
        "lpips_src_trg": model.get("lpips_src_trg"),
        "intra_lpips": model.get("intra_lpips"),
        "face_rate": model.get("face_rate"),
        "retention_mean": (model.get("retention") or {}).get("mean"),
        "kept_absent_mean": (model.get("retention_of_absent") or {}).get("mean"),
        "coverage_rate": (model.get("coverage") or {}).get("overall_rate"),
    }


def compare_runs(dataset: str, **metrics_by_method: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """One row per method plus the source model (the same for every run: one
    noise bank, one set of source samples). Keyword ``<method>`` is that run's
    metrics; ``history_<method>`` (optional) its training history, for the
    trainable-parameter share; ``translation_<method>`` its translation
    metrics (Table 1); ``edit_<method>`` and ``edit_source`` the Asyrp edit
    metrics (Table 2)."""
    histories = {k[len(HISTORY_PREFIX):]: v for k, v in metrics_by_method.items() if k.startswith(HISTORY_PREFIX)}
    translations = {k[len(TRANSLATION_PREFIX):]: v for k, v in metrics_by_method.items() if k.startswith(TRANSLATION_PREFIX)}
    edits = {k[len(EDIT_PREFIX):]: v for k, v in metrics_by_method.items() if k.startswith(EDIT_PREFIX)}
    # the source row first, then the methods in their order
    edits = {(_SOURCE_ROW if k == SOURCE_RUN else k): edits[k] for k in sorted(edits, key=lambda k: k != SOURCE_RUN)}
    metrics_by_method = {k: v for k, v in metrics_by_method.items()
                         if not k.startswith((HISTORY_PREFIX, TRANSLATION_PREFIX, EDIT_PREFIX))}
    if not metrics_by_method:
        raise ValueError("compare_runs needs the metrics of at least one method")
    first = next(iter(metrics_by_method.values()))
    rows = {_SOURCE_ROW: {**_row(first["models"]["source"]), "trainable_percent": None}}
    for method, metrics in metrics_by_method.items():
        rows[method] = _row(metrics["models"]["finetuned"])
        share = (histories.get(method) or {}).get("parameters", {}).get("trainable_share")
        rows[method]["trainable_percent"] = 100 * share if share is not None else None
    absent = first.get("training_set_attributes", {}).get("absent_values", {})
    lines = [f"# Comparison on {dataset}", "",
             f"{first['n_samples']} samples per model from one noise bank; FID/KID against the "
             f"{first['fid_reference']}.", "",
             "| model | " + " | ".join(c[0] for c in _COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(row[key], digits) for _, key, digits in _COLUMNS) + " |")
    absent_text = "; ".join(f"{k}: {', '.join(v)}" for k, v in absent.items())
    lines += ["", "Retention: share of source samples (faces) whose attribute survives in the fine-tuned sample "
              "from the same noise. Kept absent values: the same, only for values absent from the training set"
              + (f" ({absent_text})" if absent else "")
              + ". Absent-value rate: share of samples showing at least one such value."]
    translation_rows = _translation_rows(translations)
    if translation_rows:
        lines += _translation_lines(translation_rows, next(iter(translations.values())))
    if edits:
        lines += _edit_lines(edits)
    weights = {**first["weights"], **({f"translation {k}": v for k, v in
                                        next(iter(translations.values()))["weights"].items()} if translations else {}),
               **({f"editing {k}": v for k, v in next(iter(edits.values()))["weights"].items()} if edits else {})}
    lines += ["", "## Weights each metric ran on", ""]
    lines += [f"- **{k}**: {v}" for k, v in weights.items()]
    out = {"dataset": dataset, "rows": rows, "absent_values": absent}
    if translation_rows:
        out["translation_rows"] = translation_rows
    if edits:
        out["edit_rows"] = {k: v["rows"] for k, v in edits.items()}
    return out, "\n".join(lines) + "\n"


def _translation_rows(translations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """SDFT Table 1's layout: one row per (translation method, training method)."""
    rows = []
    order = [name for tm in translations.values() for name in tm["rows"]]
    for translation in dict.fromkeys(order):
        for method, tm in translations.items():
            if translation in tm["rows"]:
                rows.append({"translation": translation, "method": method, **tm["rows"][translation]})
    return rows


def _translation_lines(rows: list[dict[str, Any]], example: dict[str, Any]) -> list[str]:
    has_attrs = any("retention" in r for r in rows)
    has_id = any("identity" in r for r in rows)
    cols = [("PSNR ↑", "psnr", 2), ("SSIM ↑", "ssim", 3), ("LPIPS ↓", "lpips", 3), ("FID ↓", "fid", 2),
            ("KID x1e3 ↓", "kid_x1e3", 2)] + ([("ID ↑", "identity", 3)] if has_id else []) \
        + ([("attribute retention ↑", "retention", 3)] if has_attrs else [])
    lines = ["", "## Domain translation (SDFT Table 1 protocol)", "",
             f"{example['n_inputs']} source-domain inputs, the same for every model; FID/KID against the "
             f"{example['fid_reference']}.", "",
             "| translation | training method | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---" + "|---" * len(cols) + "|"]
    for r in rows:
        lines.append(f"| {translator_label(r['translation'])} | {r['method']} | "
                     + " | ".join(fmt(r.get(key), digits) for _, key, digits in cols) + " |")
    return lines


def _edit_lines(edits: dict[str, dict[str, Any]]) -> list[str]:
    """SDFT Table 2's protocol: Asyrp on each model (the source model's row first)."""
    example = next(iter(edits.values()))
    settings = example.get("settings", {})
    return ["", "## Text-guided editing (SDFT Table 2 protocol, Asyrp)", "",
            f"{example['n_inputs']} test images of the target dataset, the same for every model; "
            f"{settings.get('inversion_steps', '?')} inversion steps, {settings.get('steps', '?')} generative steps. "
            "S_dir: directional CLIP similarity; ID: ArcFace identity (input vs edit); success: share of edits whose "
            "FaceWorld attribute moved toward the prompt's; preservation: retention of the other attributes.", "",
            *edit_table(edits),
            *shortfall_lines(example)]  # every model edits the same split: its shortfalls once
