"""Fewer items than asked, said where a reader looks: a stage that uses fewer
items than a count setting asks for (a dataset smaller than ``editing.n_test``,
``evaluation.lpips_pairs`` above the samples...) records it in its summary
under ``fewer_than_asked``, and the run's ``report.md`` (or the stage's own
report) prints it beside the skipped files. Every stage uses these two
functions, so the record and the line read the same everywhere."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: The summary key every stage stores its records under.
KEY = "fewer_than_asked"


def fewer_than_asked(stage: str, setting: str, asked: int | None, used: int, what: str, why: str
                     ) -> list[dict[str, Any]]:
    """``[record]`` when ``used < asked`` (logged as a warning), else ``[]``,
    so a stage can add its checks together. ``what`` names the items
    ("test images"), ``why`` says why fewer were used."""
    if asked is None or int(used) >= int(asked):
        return []
    record = {"stage": stage, "setting": setting, "asked": int(asked), "used": int(used), "what": what, "why": why}
    logger.warning("%s", shortfall_line(record))
    return [record]


def shortfall_line(record: dict[str, Any]) -> str:
    """``edit: 12 of the 500 test images asked (editing.n_test): the dataset has 12 images``."""
    return (f"{record['stage']}: {record['used']} of the {record['asked']} {record['what']} asked "
            f"({record['setting']}): {record['why']}")


def shortfall_lines(*summaries: dict[str, Any] | None) -> list[str]:
    """Report lines (markdown) for the records of every given summary; none when none fell short."""
    records = [r for s in summaries if s for r in s.get(KEY) or []]
    if not records:
        return []
    return ["", "Fewer items than asked:", "", *(f"- {shortfall_line(r)}." for r in records)]
