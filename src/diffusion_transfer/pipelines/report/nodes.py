"""Report nodes of the method template: ``report.md``, the sample grid and
the loss curve of one run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_transfer.core.data.contact_sheet import contact_sheet  # noqa: E402
from diffusion_transfer.core.provenance import environment_line  # noqa: E402
from diffusion_transfer.core.training.ema import describe  # noqa: E402
from diffusion_transfer.pipelines.schedule import describe_schedule  # noqa: E402
from diffusion_transfer.pipelines.shortfall import shortfall_lines  # noqa: E402
from diffusion_transfer.pipelines.skipped_files import skipped_file_lines  # noqa: E402
from diffusion_transfer.pipelines.tables import fmt, translation_table  # noqa: E402
from diffusion_transfer.pipelines.training_samples import training_samples_lines  # noqa: E402


def _loss_plot(history: dict) -> plt.Figure:
    rows = history.get("history") or []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if rows:
        steps = [r["step"] for r in rows]
        for key in sorted({k for r in rows for k in r if k not in ("step", "lr")}):
            vals = [r.get(key, np.nan) for r in rows]
            ax.plot(steps, vals, label=key)
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss term")
    ax.set_title(f"Loss curves: {history.get('run', {}).get('run', '')}")
    fig.tight_layout()
    return fig


def _pair_grid(src: np.ndarray, trg: np.ndarray, n: int = 16) -> Image.Image:
    n = min(n, len(src), len(trg))
    rows = np.concatenate([src[:n], trg[:n]])
    return contact_sheet(rows, labels=None, columns=n, scale=3)


def _curation_line(summary: dict) -> str:
    c = summary.get("counts", {})
    rule = (f"threshold {summary['threshold']}" if summary.get("threshold") is not None
            else f"top {summary['top_n']}" if summary.get("top_n") is not None else "no score filter")
    return (f"{c.get('files')} files, {c.get('skipped_invalid')} skipped as invalid, {c.get('kept')} kept; "
            f"dropped: {c.get('dropped_by_score')} by CLIP score ({rule}), {c.get('dropped_by_zero_shot')} by "
            f"CLIP zero-shot removal, {c.get('excluded')} by the exclusion list. Criteria: "
            f"`{summary.get('criteria')}`. CLIP: {summary.get('clip')}.")


def _parameter_lines(history: dict) -> list[str]:
    c = history.get("parameters")
    if not c:
        return []
    line = (f"Trainable parameters: {c['trainable_parameters']:,} = {100 * c['trainable_share']:.2f}% of the "
            f"source model's {c['base_parameters']:,}")
    if "added_parameters" in c:
        line += f"; added modules: {c['added_parameters']:,} ({100 * c['added_share']:.2f}%)"
    if c.get("attention_block_parameters"):
        line += f"; attention blocks: {c['attention_block_parameters']:,} ({100 * c['attention_block_share']:.2f}%)"
    if "lora_parameters" in c:  # train.adapter (docs/LORA.md)
        a = c["adapter"]
        line += (f"; LoRA (rank {a['rank']}, alpha {a['alpha']:g}, dropout {a['dropout']:g}, on "
                 f"{', '.join(a['target_modules'])}): {c['lora_parameters']:,} ({100 * c['lora_share']:.2f}%)")
    lora = (history.get("saved_model") or {}).get("lora")
    return [line + "."] + ([f"LoRA adapter ({lora['format']} format, merged into the saved model): "
                            f"`{lora['folder']}`; loads onto the source model with `{lora['load']}`."] if lora else [])


def _noise_schedule_lines(history: dict) -> list[str]:
    info = history.get("noise_schedule")
    return [f"Noise schedule: {describe_schedule(info)}."] if info else []


def _model_lines(history: dict) -> list[str]:
    """The model's space (the latent line), its class label, and where the
    fine-tuned model is with the one line that loads it."""
    space, saved = history.get("model_space") or {}, history.get("saved_model")
    lines = [f"{space['latent']}." if "latent" in space else "",
             f"Class label: {space['class_label']}." if "class_label" in space else ""]
    if saved:
        lines.append(f"Fine-tuned model: `{saved['folder']}`; load it with `{saved['load']}`.")
    return [line for line in lines if line]


def _schedule_lines(history: dict) -> list[str]:
    """EMA decay warm-up and lr warm-up, from ``history["schedule"]`` (runs before it: none)."""
    s = history.get("schedule")
    if not s:
        return []
    lr = s.get("lr") or {}
    warm = (f"linear from 0 over {lr['warmup_steps']} steps, then {lr['lr']}" if lr.get("warmup_steps")
            else "none")
    return [f"EMA: {describe(s.get('ema'))}. LR warm-up: {warm}."]


def _sampling_lines(samples: dict) -> list[str]:
    """The sampler and, for ancestral sampling, which variance it used (sample meta)."""
    m = samples.get("meta") or {}
    if "sampler" not in m:
        return []
    line = f"Sampler: {m['sampler']}, {m['steps']} steps" + (f", eta {m['eta']}" if m["sampler"] == "ddim" else "")
    return [line + (f"; variance: {m['variance']}" if m.get("variance") else "") + ".", ""]


def _translation_lines(tm: dict) -> list[str]:
    settings = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in cfg.items() if k not in ("enabled", "seconds"))
        for name, cfg in tm["settings"].items())
    return ["", "## Domain translation (fine-tuned model)", "",
            f"{tm['n_inputs']} source-domain inputs ({tm.get('inputs_folder') or 'the source images'}) translated "
            "by each method. Faithfulness: PSNR, SSIM, LPIPS "
            f"between each input and its translation; realism: FID/KID against the {tm['fid_reference']}"
            + ("; attribute retention from input to translation." if any("retention" in r for r in tm["rows"].values())
               else "."), "", *translation_table(tm), "", f"Settings: {settings}.", "",
            "Top row: the inputs; then one row per method.", "", "![translations](translations.png)"]


def _environment_lines(history: dict, metrics: dict) -> list[str]:
    """Where the model was trained and where its metrics were computed (they can differ: a reused model)."""
    return [f"{what} at {environment_line(record['environment'])}." for what, record in
            (("Trained", history), ("Metrics computed", metrics)) if "environment" in record]


def _metrics_table(metrics: dict, method: str) -> list[str]:
    """The source and fine-tuned rows; an IS column when it ran, headed
    "IS-substitute" when its network is not Inception."""
    has_is = "inception_score" in metrics["models"]["source"]
    is_head = (" IS-substitute ↑ |" if metrics.get("inception_score_substitute") else " IS ↑ |") if has_is else ""
    lines = ["| model | FID | KID (x10^3) |" + is_head
             + " LPIPS src-trg | intra-LPIPS | face rate | coverage of absent attributes |",
             "|---|---|---|" + ("---|" if has_is else "") + "---|---|---|---|"]
    for key, label in (("source", "source (pretrained)"), ("finetuned", f"{method} (fine-tuned)")):
        row = metrics["models"][key]
        cov = (row.get("coverage") or {}).get("overall_rate")
        is_cell = f" {fmt(row['inception_score'], 2)} ± {fmt(row['inception_score_std'], 2)} |" if has_is else ""
        lines.append(f"| {label} | {fmt(row.get('fid'), 2)} | {fmt(row.get('kid_x1e3'), 2)} |{is_cell} "
                     f"{fmt(row.get('lpips_src_trg'))} | {fmt(row.get('intra_lpips'))} | {fmt(row.get('face_rate'))} "
                     f"| {fmt(cov)} |")
    return lines


def _inception_score_lines(metrics: dict) -> list[str]:
    """How IS was computed, and whether its network is a substitute."""
    row = metrics["models"]["source"]
    if "inception_score" not in row:
        return []
    what = ("IS-substitute (not comparable to published IS): " if metrics.get("inception_score_substitute")
            else "IS: ")
    return ["", f"{what}mean ± std over {row['inception_score_splits']} splits of each model's samples "
                f"(torch-fidelity), on {metrics['weights']['inception_score']}."]


def build_report(metrics: dict, history: dict, curation_summary: dict, source_samples: dict,
                 target_samples: dict, translation_metrics: dict | None = None) -> tuple[str, Image.Image, plt.Figure]:
    run = history["run"]
    m = metrics["models"]
    lines = [f"# Report: {run['run']}", "",
             f"Method **{run['method']}** on dataset **{run['dataset']}**; "
             f"{metrics['n_samples']} samples per model from the same noise bank.", "",
             "## Metrics", "", *_metrics_table(metrics, run["method"]),
             "", f"FID/KID against the {metrics['fid_reference']}."]
    lines += _inception_score_lines(metrics)
    if metrics.get("skipped"):
        lines += ["", "Metrics not run: " + "; ".join(metrics["skipped"]) + "."]
    if "retention" in m["finetuned"]:
        ret = m["finetuned"]["retention"]
        lines += ["", "## Attribute retention (source sample -> fine-tuned sample, same noise)", "",
                  "Over the pairs whose source sample is a face.", "",
                  "| " + " | ".join(ret) + " |", "|" + "---|" * len(ret),
                  "| " + " | ".join(fmt(v) for v in ret.values()) + " |"]
        absent = metrics.get("training_set_attributes", {}).get("absent_values", {})
        if absent:
            src_rate = m["source"].get("coverage", {}).get("absent_rate", {})
            trg_rate = m["finetuned"].get("coverage", {}).get("absent_rate", {})
            kept = m["finetuned"].get("retention_of_absent", {})
            lines += ["", "## Attribute values absent from the training set", "",
                      "Rate: share of samples showing the value. Kept: of the source samples showing it, the share "
                      "whose fine-tuned sample (same noise) still shows it.", "",
                      "| attribute | absent values | source rate | fine-tuned rate | kept |", "|---|---|---|---|---|"]
            for name, values in absent.items():
                lines.append(f"| {name} | {', '.join(values)} | {fmt(src_rate.get(name))} | "
                             f"{fmt(trg_rate.get(name))} | {fmt(kept.get(name))} |")
    if translation_metrics is not None:
        lines += _translation_lines(translation_metrics)
    lines += ["", "## Samples", "", "Top row: source model; bottom row: fine-tuned model, same initial noise.", "",
              *_sampling_lines(target_samples), "![source vs fine-tuned](samples_src_vs_trg.png)", "",
              "## Training", "",
              f"Hyperparameters: `{run['hyperparameters']}`; steps {run['train']['steps']}, "
              f"batch {run['train']['batch_size']}, lr {run['train']['lr']}, EMA {run['train']['ema_decay']}.",
              f"Resumed from step: {history.get('resumed_from_step')}.", *_model_lines(history),
              *_environment_lines(history, metrics),
              *_noise_schedule_lines(history),
              *_schedule_lines(history),
              *_parameter_lines(history), "",
              "![loss curves](loss_curve.png)", *training_samples_lines(history), "",
              "## Curation", "",
              _curation_line(curation_summary), *skipped_file_lines(curation_summary, translation_metrics),
              *shortfall_lines(curation_summary, metrics, translation_metrics), "",
              "![curation contact sheet](../curate_" + str(run["dataset"]) + "/contact_sheet.png)", "",
              "## Weights each metric ran on", ""]
    weights = {**metrics["weights"], **({f"translation {k}": v for k, v in translation_metrics["weights"].items()}
                                        if translation_metrics is not None else {})}
    lines += [f"- **{k}**: {v}" for k, v in weights.items()]
    report = "\n".join(lines) + "\n"
    grid = _pair_grid(source_samples["images"].numpy(), target_samples["images"].numpy())
    return report, grid, _loss_plot(history)


def _text_to_image_metric_lines(metrics: dict, method: str) -> list[str]:
    """FID/KID and CLIP score of both models, and the absent concepts' table;
    a FaceWorld model on another dataset's images heads its column "-substitute"."""
    sub = "-substitute" if metrics.get("clip_score_substitute") else ""
    lines = ["## Metrics", "", f"| model | FID | KID (x10^3) | CLIP score{sub} ↑ |", "|---|---|---|---|"]
    for key, label in (("source", "source (pretrained)"), ("finetuned", f"{method} (fine-tuned)")):
        row = metrics["models"][key]
        lines.append(f"| {label} | {fmt(row['fid'], 2)} | {fmt(row['kid_x1e3'], 2)} | {fmt(row['clip_score'], 2)} |")
    lines += ["", f"FID/KID against the {metrics['fid_reference']}. CLIP score{sub}: max(100 x mean cosine of each "
                  "sample's image embedding and its prompt's text embedding, 0) (torchmetrics' CLIPScore)."]
    absent = metrics.get("absent_concepts")
    if absent:
        sub = "-substitute" if metrics.get("attributes_substitute") else ""
        lines += ["", f"## Concepts absent from the training set{' (substitute classifier)' if sub else ''}", "",
                  f"Each prompt sampled by both models on the same {absent['n_per_prompt']} seeds. Rate: share of "
                  "samples the attribute classifier reads as a face showing the concept. Kept: of the source "
                  "samples showing it, the share whose fine-tuned sample (same seed) still shows it.", "",
                  "| prompt | shows | training set rate | source rate | fine-tuned rate | kept | CLIP score source | "
                  "CLIP score fine-tuned |", "|---|---|---|---|---|---|---|---|"]
        for prompt, r in absent["concepts"].items():
            shows = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["shows"].items())
            lines.append(f"| `{prompt}` | {shows} | {fmt(r.get('training_set_rate'))} | {fmt(r.get('source_rate'))} "
                         f"| {fmt(r.get('finetuned_rate'))} | {fmt(r.get('kept'))} | "
                         f"{fmt(r.get('source_clip_score'), 2)} | {fmt(r.get('finetuned_clip_score'), 2)} |")
    if metrics.get("skipped"):
        lines += ["", "Metrics not run: " + "; ".join(metrics["skipped"]) + "."]
    return lines + [""]


def build_text_to_image_report(metrics: dict, history: dict, curation_summary: dict, source_samples: dict,
                               target_samples: dict) -> tuple[str, Image.Image, plt.Figure]:
    """``report.md`` of a text-to-image run (issue 34): its metrics (FID/KID
    against the target, CLIP score, retention of absent concepts), the
    samples of the source and the fine-tuned model for the same prompts and
    noise, the training and the saved model, and the weights each metric ran on."""
    run, m = history["run"], target_samples.get("meta") or {}
    prompts = list(dict.fromkeys(m.get("prompts") or []))
    lines = [f"# Report: {run['run']}", "",
             f"Method **{run['method']}** on dataset **{run['dataset']}**, a text-to-image source model; "
             f"{len(target_samples['images'])} samples per model from the same noise bank and prompts.", "",
             *_text_to_image_metric_lines(metrics, run["method"]),
             "## Samples", "", "Top row: source model; bottom row: fine-tuned model, same noise and prompt.", "",
             f"Sampler: {m.get('sampler')}, {m.get('steps')} steps, guidance scale {m.get('guidance_scale')}, "
             f"negative prompt `{m.get('negative_prompt')!r}`. Prompts: "
             + "; ".join(f"`{p}`" for p in prompts[:10]) + ("; ..." if len(prompts) > 10 else "") + ".", "",
             "![source vs fine-tuned](samples_src_vs_trg.png)", "", "## Training", "",
             f"Hyperparameters: `{run['hyperparameters']}`; steps {run['train']['steps']}, "
             f"batch {run['train']['batch_size']}, lr {run['train']['lr']}, EMA {run['train']['ema_decay']}.",
             f"Resumed from step: {history.get('resumed_from_step')}.", *_model_lines(history),
             *_environment_lines(history, metrics),
             *_noise_schedule_lines(history), *_schedule_lines(history), *_parameter_lines(history), "",
             "![loss curves](loss_curve.png)", "", "## Curation", "", _curation_line(curation_summary),
             *skipped_file_lines(curation_summary), *shortfall_lines(curation_summary, metrics), "",
             "## Weights each metric ran on", "", *(f"- **{k}**: {v}" for k, v in metrics["weights"].items())]
    grid = _pair_grid(source_samples["images"].numpy(), target_samples["images"].numpy())
    return "\n".join(lines) + "\n", grid, _loss_plot(history)
