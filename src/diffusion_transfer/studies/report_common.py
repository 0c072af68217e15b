"""What both study reports (``report.py``, ``edit_report.py``) write alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion_transfer.core.methods import method_names  # noqa: E402
from diffusion_transfer.studies.spec import slug  # noqa: E402


def method_of(pipeline: str) -> str:
    """``sdft_aahq`` -> ``sdft``, ``anl_uncond_haunted_houses`` -> ``anl_uncond``
    (a run pipeline is ``<method>_<dataset>``; both may contain ``_``)."""
    longest_first = sorted(method_names(), key=len, reverse=True)
    return next((m for m in longest_first if pipeline.startswith(f"{m}_")), pipeline.rsplit("_", 1)[0])


def dataset_of(pipeline: str) -> str:
    """``naive_clip_lsketches_25`` -> ``lsketches_25``."""
    return pipeline[len(method_of(pipeline)) + 1:]


def grid_label(value: Any) -> str:
    """A grid value as tables show it (a mapping axis: its values joined)."""
    return slug(value) if isinstance(value, dict) else str(value)


def save_figure(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_header(name: str, rows: list[dict[str, Any]], root: Path) -> list[str]:
    """The report's title and how many points are done."""
    done = sum(r["done"] for r in rows)
    return [f"# Study: {name}", "", f"{done} of {len(rows)} points run. Each point is its own run under "
            f"`{root.name}/<point>/` (its own data root); `python -m diffusion_transfer.studies run {name}` "
            f"runs the rest.", ""]
