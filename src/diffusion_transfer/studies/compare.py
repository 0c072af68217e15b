"""Several studies' runs on one protocol, side by side, each run against the
reference method *at an equal or better FID*:

    python -m diffusion_transfer.studies compare STUDY [STUDY ...] [--reference naive] [--as NAME]

The done points of the named studies are pooled, one row per distinct run (a
configuration that two studies share gives the same metrics and is listed
once, with every study that ran it). A run of another method is compared with
the best the reference does at an equal or better FID: the highest retention
among the reference's runs whose FID is at most the run's, the source model
counted as the reference at step 0 (its FID, every absent value kept). No
interpolation: a reference that is not measured near a run's FID is not
credited with what it might do there, so the reference's runs must be dense
(a naive study over training lengths). A run keeps *more* only when its
retention is above that by more than twice the standard error of the
difference, so that one or two samples out of the few with the value decide
nothing. Runs that differ only in their seed replicate (the ``replicate``
axis) are one row: their mean, whose standard error combines the replicates'
(sample sd / sqrt(n)) with the binomial error of the share (the noise bank
they share); a run without replicates has the binomial error alone.

Writes ``<studies root>/<NAME>/``: ``comparison.md``, ``comparison.json`` and
``fid_vs_kept.png`` (one panel per absent attribute and their mean).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion_transfer.project.schema import InvalidParametersError  # noqa: E402
from diffusion_transfer.studies.report import point_row  # noqa: E402
from diffusion_transfer.studies.report_common import method_of, save_figure  # noqa: E402
from diffusion_transfer.studies.spec import REPLICATE_AXIS, Point  # noqa: E402

PLOT_FILE = "fid_vs_kept.png"


def pooled_runs(studies: dict[str, tuple[list[Point], Path]]) -> list[dict[str, Any]]:
    """One row per distinct done run of the studies, in study order; ``runs``
    lists ``study: grid values`` of every point that gave it."""
    rows: dict[tuple, dict[str, Any]] = {}
    for name, (points, root) in studies.items():
        for point in points:
            row = point_row(point, root)
            if not row["done"]:
                continue
            m = row["metrics"]
            key = (point.pipeline, m.get("fid"), tuple(sorted((k, v) for k, v in m.items()
                                                              if k.startswith("retention_of_absent."))))
            label = f"{name}: {' '.join(row['labels'].values())}"
            if key in rows:
                rows[key]["runs"].append(label)
            else:
                metrics_file = root / point.id / "08_reporting" / point.namespace / "metrics.json"
                rows[key] = {**row, "runs": [label], "method": method_of(point.pipeline), "study": name,
                             "metrics_file": str(metrics_file)}
    return merge_replicates(list(rows.values()))


def merge_replicates(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one study that differ only in their ``replicate`` grid value as
    one row: each metric's mean over them, ``replicate_sd`` (sample standard
    deviation) and ``replicate_errors`` (sd / sqrt(n)) per metric, n in
    ``replicates``. A lone replicate stays a row of its own."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        labels = tuple((a, v) for a, v in row["labels"].items() if a != REPLICATE_AXIS)
        groups.setdefault((row["study"], row["pipeline"], labels), []).append(row)
    merged = []
    for (study, _, labels), group in groups.items():
        if len(group) < 2:
            merged.extend(group)
            continue
        n = len(group)
        keys = [k for k, v in group[0]["metrics"].items() if isinstance(v, (int, float))
                and all(isinstance(r["metrics"].get(k), (int, float)) for r in group)]
        sd = {k: statistics.stdev(float(r["metrics"][k]) for r in group) for k in keys}
        label = " ".join(str(v) for _, v in labels) or group[0]["pipeline"]
        merged.append({**group[0], "runs": [f"{study}: {label} ({n} replicates)"], "replicates": n,
                       "metrics": {k: statistics.fmean(float(r["metrics"][k]) for r in group) for k in keys},
                       "replicate_sd": sd, "replicate_errors": {k: v / math.sqrt(n) for k, v in sd.items()},
                       "points": [r["point"] for r in group]})
    return merged


def absent_counts(metrics_json: dict[str, Any]) -> dict[str, int]:
    """Per absent attribute: how many source samples show one of its absent
    values (the denominator of its retention)."""
    absent = (metrics_json.get("training_set_attributes") or {}).get("absent_values") or {}
    source = (metrics_json.get("models") or {}).get("source") or {}
    faces = metrics_json.get("n_samples", 0) * source.get("face_rate", 1.0)
    freqs = source.get("frequencies") or {}
    return {a: round(faces * sum(freqs.get(a, {}).get(v, 0.0) for v in values)) for a, values in absent.items()}


def best_at_or_below(runs: list[tuple[float, float, float]], fid: float) -> tuple[float, float] | None:
    """The highest retention among ``runs`` ((FID, retention, its standard
    error) each) whose FID is at most ``fid``, with that run's standard error;
    None when every run has a worse FID."""
    eligible = [(kept, se) for f, kept, se in runs if f <= fid]
    return max(eligible) if eligible else None


def standard_error(share: float, n: int) -> float:
    """Binomial standard error of a share of ``n`` samples."""
    return math.sqrt(max(share * (1.0 - share), 0.0) / n) if n > 0 else float("inf")


def retention_error(metrics: dict[str, float], key: str, counts: dict[str, int]) -> float:
    """Binomial standard error of ``retention_of_absent.<attr>``, or of their
    ``mean`` (the attributes' errors combined: the mean of independent shares)."""
    attr = key.rsplit(".", 1)[1]
    if attr != "mean":
        return standard_error(metrics[key], counts[attr])
    parts = [standard_error(metrics[f"retention_of_absent.{a}"], n) for a, n in counts.items()]
    return math.sqrt(sum(p * p for p in parts)) / len(parts)


def compare_to_reference(rows: list[dict[str, Any]], reference: str, source_fid: float,
                         counts: dict[str, int]) -> None:
    """Adds ``at_reference[<key>] = (the reference's best retention at an equal
    or better FID, difference, more?)`` to every row of another method, per
    absent attribute and for their mean."""
    keys = [f"retention_of_absent.{a}" for a in counts] + ["retention_of_absent.mean"]
    ref_rows = [r for r in rows if r["method"] == reference]
    for row in rows:
        if row["method"] == reference:
            continue
        row["at_reference"] = {}
        for key in keys:
            runs = [(source_fid, 1.0, 0.0)] + [(r["metrics"]["fid"], r["metrics"][key], row_error(r, key, counts))
                                               for r in ref_rows if key in r["metrics"]]
            kept = row["metrics"].get(key)
            found = best_at_or_below(runs, row["metrics"]["fid"]) if kept is not None else None
            if found is None:
                row["at_reference"][key] = None
                continue
            ref_kept, ref_se = found
            diff = kept - ref_kept
            more = diff > 2.0 * math.hypot(row_error(row, key, counts), ref_se)
            row["at_reference"][key] = (ref_kept, diff, more)


def row_error(row: dict[str, Any], key: str, counts: dict[str, int]) -> float:
    """The standard error of a row's ``key``: binomial (``retention_error``),
    and for a row of replicates combined with theirs (sd / sqrt(n)). The
    replicates of a study share one noise bank (``sampling.seed``), so their
    spread is the training seeds' alone: the bank's own sampling noise is not
    in it, and two replicates that agree exactly do not make an error of 0."""
    binomial = retention_error(row["metrics"], key, counts)
    if key in row.get("replicate_errors", {}):
        return math.hypot(row["replicate_errors"][key], binomial)
    return binomial


def _cell(row: dict[str, Any], key: str) -> str:
    kept = row["metrics"].get(key)
    if kept is None:
        return "n/a"
    ref = (row.get("at_reference") or {}).get(key)
    if ref is None:
        return f"{kept:.3f}"
    return f"{kept:.3f} ({ref[0]:.3f}, {'**' if ref[2] else ''}{ref[1]:+.3f}{'**' if ref[2] else ''})"


def comparison_table(rows: list[dict[str, Any]], attrs: dict[str, list[str]], reference: str) -> list[str]:
    keys = [(f"retention_of_absent.{a}", f"{', '.join(v)} kept") for a, v in attrs.items()]
    keys.append(("retention_of_absent.mean", "mean kept"))
    lines = ["| # | run(s) | method | FID | KID x10^3 | " + " | ".join(t for _, t in keys) + " | LPIPS src-trg |",
             "|" + "---|" * (len(keys) + 6)]
    for i, row in enumerate(rows, 1):
        m = row["metrics"]
        fid = f"{m['fid']:.2f}" + (f" ± {row['replicate_sd']['fid']:.2f}" if "replicate_sd" in row else "")
        lines.append(f"| {i} | {'<br>'.join(row['runs'])} | {row['method']} | {fid} | "
                     f"{m.get('kid_x1e3', float('nan')):.2f} | " + " | ".join(_cell(row, k) for k, _ in keys)
                     + f" | {m.get('lpips_src_trg', float('nan')):.3f} |")
    return lines


def summary(rows: list[dict[str, Any]], attrs: dict[str, list[str]], reference: str) -> list[str]:
    """How many runs of each other method keep more than the reference at their FID."""
    lines = []
    for method in sorted({r["method"] for r in rows} - {reference}):
        mine = [r for r in rows if r["method"] == method]
        for attr, title in [*((a, ", ".join(v)) for a, v in attrs.items()), ("mean", "the mean")]:
            got = [r["at_reference"].get(f"retention_of_absent.{attr}") for r in mine]
            compared = [g for g in got if g is not None]
            more = sum(g[2] for g in compared)
            above = sum(g[1] > 0 for g in compared)
            lines.append(f"- {method}, {title}: {more} of {len(compared)} runs keep more than {reference} does at "
                         f"an equal or better FID, by over two standard errors ({above} more at all); "
                         f"{len(got) - len(compared)} with a better FID than every {reference} run.")
    return lines


def best_staircase(ref: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(x: retention, y: FID) vertices of the reference's best retention at an
    equal or better FID, over ``ref`` sorted by FID: a staircase; a run to its
    right keeps more than the reference does at its FID."""
    xs, ys, best = [], [], 0.0
    for fid, kept in ref:
        if xs:
            xs.append(best)
            ys.append(fid)
        best = max(best, kept)
        xs.append(best)
        ys.append(fid)
    return xs, ys


def comparison_plot(rows: list[dict[str, Any]], attrs: dict[str, list[str]], reference: str,
                    source_fid: float) -> plt.Figure:
    panels = [(f"retention_of_absent.{a}", f"{', '.join(v)} kept") for a, v in attrs.items()]
    panels.append(("retention_of_absent.mean", "absent values kept (mean)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), sharey=True, squeeze=False)
    colours = dict(zip(sorted({r["method"] for r in rows} - {reference}), ["tab:red", "tab:green", "tab:purple",
                                                                          "tab:orange", "tab:brown"]))
    for ax, (key, title) in zip(axes[0], panels):
        ref = sorted([(source_fid, 1.0)] + [(r["metrics"]["fid"], r["metrics"][key]) for r in rows
                                             if r["method"] == reference and key in r["metrics"]])
        ax.scatter([k for _, k in ref], [f for f, _ in ref], s=26, c="tab:blue", zorder=3,
                   label=f"{reference} (and the source model)")
        ax.plot(*best_staircase(ref), c="tab:blue", lw=1, label=f"{reference}'s best at an equal or better FID")
        ax.annotate("source", (1.0, source_fid), fontsize=6, xytext=(-26, 4), textcoords="offset points")
        for i, row in enumerate(rows, 1):
            if key not in row["metrics"]:
                continue
            x, y = row["metrics"][key], row["metrics"]["fid"]
            if row["method"] != reference:
                ax.scatter([x], [y], s=22, c=colours.get(row["method"], "black"), zorder=3)
            ax.annotate(str(i), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points",
                        color="tab:blue" if row["method"] == reference else "black")
        ax.set_xlabel(f"{title} (higher is better)")
        ax.set_xlim(-0.03, 1.03)
    for method, colour in colours.items():
        axes[0][0].scatter([], [], c=colour, s=22, label=f"{method} (numbers: the table's rows)")
    axes[0][0].set_ylabel("FID (lower is better)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_comparison(name: str, studies: dict[str, tuple[list[Point], Path]], reference: str, out: Path) -> Path:
    """Write the comparison of the studies' done runs under ``out``; returns comparison.md's path."""
    # the reference's runs first, then each other method, from the source's end (highest FID) down
    rows = sorted(pooled_runs(studies), key=lambda r: (r["method"] != reference, r["method"], -r["metrics"]["fid"]))
    if not any(r["method"] == reference for r in rows):
        raise InvalidParametersError(f"compare: no done run of the reference method {reference!r} in "
                                     f"{', '.join(studies)}; name a study with one, or set --reference")
    metrics_json = json.loads(Path(rows[0]["metrics_file"]).read_text())  # the protocol's: one for all runs
    sources = {r["metrics"].get("source.fid") for r in rows}
    if len(sources) != 1 or None in sources:
        raise InvalidParametersError(f"compare: the studies {', '.join(studies)} do not share one source model "
                                     f"and reference set (source FIDs {sorted(map(str, sources))})")
    source_fid = sources.pop()
    attrs = (metrics_json.get("training_set_attributes") or {}).get("absent_values") or {}
    counts = absent_counts(metrics_json)
    compare_to_reference(rows, reference, source_fid, counts)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(comparison_plot(rows, attrs, reference, source_fid), out / PLOT_FILE)
    denominators = ", ".join(f"{', '.join(attrs[a])} {n}" for a, n in counts.items())
    lines = [f"# Comparison: {name}", "", f"Studies: {', '.join(studies)}; {len(rows)} distinct runs. "
             f"The source (pretrained) model's FID: {source_fid:.2f}. Source samples with an absent value: "
             f"{denominators}.", "",
             f"Cells: the share kept, then ({reference}'s best share at an equal or better FID, the difference); "
             "in bold where the difference is over two standard errors: binomial of the row's samples, combined "
             "with the seed replicates' (sd / sqrt(n)) where a row has two or more (their mean, FID ± its sample "
             "sd). "
             f"{reference}'s runs include the source "
             "model, as step 0; no interpolation between them.", "",
             *summary(rows, attrs, reference), "", *comparison_table(rows, attrs, reference), "",
             f"![FID against absent values kept]({PLOT_FILE})", ""]
    (out / "comparison.json").write_text(json.dumps({"studies": list(studies), "reference": reference,
                                                     "source_fid": source_fid, "absent_counts": counts,
                                                     "rows": rows}, indent=2, default=str))
    (out / "comparison.md").write_text("\n".join(lines))
    return out / "comparison.md"
