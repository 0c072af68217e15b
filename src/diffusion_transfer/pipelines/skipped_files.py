"""Skipped files, said where a reader looks: every file of an input folder that
a stage could not use is listed with its reason in the stage's summary
(curation's ``summary.json``, the classifier report, the translation
metrics) and in the run's ``report.md``."""

from __future__ import annotations

from typing import Any

#: At most this many files are named per folder in report.md (the summaries keep them all).
REPORT_LIMIT = 50


def skipped_records(skipped: list[tuple[str, str]] | list[list[str]]) -> list[dict[str, str]]:
    """``(name, reason)`` pairs as the summaries store them."""
    return [{"file": name, "reason": reason} for name, reason in skipped]


def sidecar_summary(folder: Any, names: list[str]) -> dict[str, Any] | None:
    """How a real folder's ``attributes.jsonl`` matches its images: images it
    does not list, records of files that are not there, unusable lines. None
    without a sidecar (or for a FaceWorld domain, whose records are generated)."""
    records = getattr(folder, "records", None) or {}
    problems = list(getattr(folder, "sidecar_problems", []) or [])
    if getattr(folder, "source", "folder") != "folder" or not (records or problems):
        return None
    present = {p.name for p in folder.files}
    without_record = [n for n in names if n not in records]
    out = {"file": str(folder.root / "attributes.jsonl"), "images_without_record": without_record,
           "records_without_image": sorted(set(records) - present),
           "unusable_lines": skipped_records(problems)}
    if without_record:
        out["effect"] = ("the records are not used (the report predicts the attributes instead): "
                         f"{len(without_record)} image(s) have no record; add a line for each to use them")
    return out


def records_for(folder: Any, names: list[str]) -> list[dict]:
    """The records of ``names``; none unless every name has one."""
    records = getattr(folder, "records", None) or {}
    if not records or any(n not in records for n in names):
        return []
    return [records[n] for n in names]


def skipped_file_lines(curation_summary: dict[str, Any], translation_metrics: dict[str, Any] | None = None
                       ) -> list[str]:
    """Report lines naming every file a stage of the run skipped, and why."""
    lines: list[str] = []
    folders = [(f"Curation ({curation_summary.get('folder', 'the dataset folder')})",
                curation_summary.get("skipped") or [])]
    if translation_metrics is not None:
        folders.append((f"Translation inputs ({translation_metrics.get('inputs_folder', 'the source images')})",
                        translation_metrics.get("skipped_inputs") or []))
    for title, skipped in folders:
        if skipped:
            shown = "; ".join(f"`{s['file']}`: {s['reason']}" for s in skipped[:REPORT_LIMIT])
            more = f"; and {len(skipped) - REPORT_LIMIT} more (the stage's summary lists them)" \
                if len(skipped) > REPORT_LIMIT else ""
            lines += ["", f"{title} skipped {len(skipped)} file(s): {shown}{more}."]
    sidecar = curation_summary.get("sidecar")
    if sidecar and (sidecar["images_without_record"] or sidecar["records_without_image"]
                    or sidecar["unusable_lines"]):
        lines += ["", f"`{sidecar['file']}`: {len(sidecar['images_without_record'])} image(s) without a record "
                      f"({', '.join(sidecar['images_without_record'][:REPORT_LIMIT]) or 'none'}), "
                      f"{len(sidecar['records_without_image'])} record(s) of absent files "
                      f"({', '.join(sidecar['records_without_image'][:REPORT_LIMIT]) or 'none'}), "
                      f"{len(sidecar['unusable_lines'])} unusable line(s)"
                      + (f"; {sidecar['effect']}" if sidecar.get("effect") else "") + "."]
    return lines
