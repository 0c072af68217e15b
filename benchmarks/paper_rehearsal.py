"""The ``paper`` pipeline end to end through Kedro on stand-ins: each node's wall time and peak memory (issue 35).

The script copies the project (``pyproject.toml``, ``conf``, ``src`` and the FaceWorld world folder) into
``OUT/project``, runs ``--env=paper`` there once to get the pre-run check's list of missing inputs, puts a
stand-in at each listed path, and runs the pipeline again with reduced counts and steps, timing every node.
The stand-ins are random images and randomly initialised weights, never real ones, so every number the run
writes (FID, KID, LPIPS, ID...) is from substitute weights and means nothing; the timings and the memory are
what the rehearsal measures. ``results.md`` and ``results.json`` say so.

Scales (``--scale``):

* ``paper``, for a GPU: the architectures ``conf/paper`` names at 256 px: P2-weighting's FFHQ ADM
  (93.6M parameters), open_clip ViT-B-32, Inception-v3's layout (torchvision's, in clean-fid's TorchScript
  shape), AlexNet and ArcFace IR-SE50; ``REHEARSAL`` reduces the counts and steps to minutes, and keeps
  conf/paper's bf16 (a CPU without native bf16 refuses it before any node runs).
* ``tiny``, for a CPU check: a 32 px UNet, a tiny CLIP and a pooled-linear Inception stand-in, with
  ``TINY_RUN``'s counts (``tests/test_paper_standins.py`` runs it).

Peak memory per node: the CUDA allocator's peak (reset before each node) on a GPU, else the process's
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` where Linux allows it).

    python benchmarks/paper_rehearsal.py --out DIR [--scale paper|tiny] [--pipeline sdft_aahq] [--params k=v,...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kedro.framework.hooks import hook_impl
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import runtime_params  # noqa: E402
from bench_gpu import environment  # noqa: E402

from diffusion_transfer.core.cpu_precision import cpu_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: A tiny open_clip architecture standing in for ViT-B-32 at the ``tiny`` scale.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
#: A 32 px learned-sigma UNet standing in for ffhq_p2 at the ``tiny`` scale.
TINY_UNET = dict(sample_size=32, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=8, out_channels=6)

# Paper settings scaled to seconds on a CPU: resolution, counts and networks only; float32 where
# conf/paper asks bf16 for GPUs (a CPU without native bf16 refuses it: issue 35).
TINY_RUN = {
    "datasets": {"aahq": {"curation": {"top_n": 8, "threshold": None}}},  # a random CLIP: keep the top 8
    "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 1, "log_every": 1, "mixed_precision": "no"},
    "sampling": {"n_samples": 8, "batch_size": 8, "steps": 3, "precision": "no"},
    "evaluation": {"lpips_pairs": 8},
    "classifier": {"source_images": 16, "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 1},
                   "network": {"block_out_channels": [8, 16], "attention_blocks": [False, True],
                               "layers_per_block": 1, "norm_num_groups": 4, "pool_heads": 2},
                   "datasets": {"aahq": {"train": {"steps": 2}}}, "buckets": 2, "repeats": 1},
    # Two methods: each FID on 2048-d features costs a ~10 s matrix square root.
    "translation": {"n_inputs": 4, "batch_size": 4, "precision": "no", "sdedit": {"steps": 3},
                    "ilvr": {"enabled": False}, "egsde": {"steps": 3}, "ddib": {"enabled": False}},
}

# conf/paper at 256 px with its networks, batch sizes and precision, counts and steps cut to minutes on one GPU.
REHEARSAL = {
    "datasets": {"aahq": {"curation": {"top_n": 256, "threshold": None}}},  # a random CLIP: keep the top 256
    "train": {"steps": 200, "checkpoint_every": 100, "log_every": 20, "sample_every": 100},
    "sampling": {"n_samples": 256},
    "evaluation": {"lpips_pairs": 256},
    "classifier": {"source_images": 512, "train": {"steps": 200, "checkpoint_every": 100},
                   "datasets": {"aahq": {"train": {"steps": 200}}}},
    "translation": {"n_inputs": 64, "sdedit": {"steps": 100}, "ilvr": {"steps": 100}, "egsde": {"steps": 100}},
}
#: Images written into each raw folder the check lists, by scale.
N_IMAGES = {"tiny": 40, "paper": 512}


def scratch_project(out: Path) -> Path:
    """A copy of the project to run in (its own ``data/``), with the FaceWorld world folder linked."""
    proj = out / "project"
    if proj.exists():
        shutil.rmtree(proj)
    proj.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", proj / "pyproject.toml")
    shutil.copytree(ROOT / "conf", proj / "conf", ignore=shutil.ignore_patterns("local"))
    (proj / "conf" / "local").mkdir()
    shutil.copytree(ROOT / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (proj / "data" / "06_models").mkdir(parents=True)
    (proj / "data" / "06_models" / "world").symlink_to(ROOT / "data" / "06_models" / "world")
    return proj


def run_pipeline(proj: Path, pipeline: str, params: dict | None = None, hooks: tuple = ()) -> None:
    """``kedro run --env=paper --pipeline=<pipeline> [--params ...]`` in ``proj``, with extra ``hooks``."""
    from kedro.framework.session import KedroSession  # after the environment below is set
    from kedro.framework.startup import bootstrap_project

    for key, value in (("KEDRO_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("HF_HUB_OFFLINE", "1"),
                       ("MLFLOW_DISABLE_TELEMETRY", "true"), ("DT_TRACKING", "off")):
        os.environ.setdefault(key, value)
    old = Path.cwd()
    os.chdir(proj)  # catalog paths are relative to the project
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env="paper", runtime_params=params) as session:
            for hook in hooks:
                session._hook_manager.register(hook)  # Kedro has no public way to add a hook to one session
            session.run(pipeline_names=[pipeline])
    finally:
        os.chdir(old)


def missing_inputs(proj: Path, pipeline: str) -> dict[str, Path]:
    """The pre-run check's list for ``pipeline``: each missing input's name and the path it names."""
    from diffusion_transfer.project.preflight import MissingInputsError

    try:
        run_pipeline(proj, pipeline)
    except MissingInputsError as err:
        missing = {}
        for line in str(err).splitlines():
            m = re.match(r"\s+- ([\w.]+): (.*)", line)
            if m:
                path = re.search(r"(data/[\w./-]+?)(?:\.?\s|\.$|$)", m.group(2))
                missing[m.group(1)] = proj / path.group(1) if path else Path(m.group(2))
        return missing
    raise RuntimeError(f"kedro run --env=paper --pipeline={pipeline} ran without stopping for missing inputs")


class _PooledInception(torch.nn.Module):
    """clean-fid's TorchScript layout (a ``layers`` submodule giving 2048-d features), seconds on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(48, 2048))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _InceptionLayers(torch.nn.Module):
    """Inception-v3 (torchvision's layout, random weights) up to its 2048-d pool: the real one's arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision  # only the paper scale builds it

        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        self.net.fc = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net._forward(x)[0]


class _Inception(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = _InceptionLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def write_images(folder: Path, n: int, size: int, seed: int) -> None:
    """``n`` smooth random RGB images (bicubic from 8x8 noise) of ``size`` px."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        low.resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.png")


def write_clip(path: Path, proj: Path, scale: str) -> None:
    """Random open_clip weights at ``path``: ViT-B-32 itself, or (tiny) a small architecture named in the catalog."""
    import open_clip  # a stand-in is needed only when the check lists a CLIP

    name = "ViT-B-32"
    if scale == "tiny":
        config_dir = proj / "build" / "clip_configs"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(config_dir)
        catalog = proj / "conf" / "paper" / "catalog.yml"
        catalog.write_text(catalog.read_text().replace("model: ViT-B-32", "model: tiny-clip"))
        name = "tiny-clip"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(open_clip.create_model(name).state_dict(), path)


def place_stand_ins(proj: Path, missing: dict[str, Path], scale: str) -> dict[str, str]:
    """A stand-in at each listed path; returns what each one is. Raises for an input it has none for."""
    import torchvision

    from diffusion_transfer.core.models.adm import FFHQ_P2, adm_unet_config
    from diffusion_transfer.core.models.arcface import ArcFaceIRSE
    from diffusion_transfer.core.models.unet import build_unet, save_unet

    torch.manual_seed(0)
    unet_config = TINY_UNET if scale == "tiny" else adm_unet_config(FFHQ_P2)
    placed: dict[str, str] = {}
    for seed, (name, path) in enumerate(sorted(missing.items())):
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("_raw") or name == "source_images":
            write_images(path, N_IMAGES[scale], unet_config["sample_size"], seed)
            placed[name] = f"{N_IMAGES[scale]} smooth random images"
        elif name == "source_model":
            save_unet(build_unet(unet_config), path)
            placed[name] = "a randomly initialised UNet" + (" (ffhq_p2's ADM architecture)" if scale == "paper" else "")
        elif name.endswith("_clip"):
            if not path.is_file():
                write_clip(path, proj, scale)
            placed[name] = "random open_clip weights" + (" (ViT-B-32)" if scale == "paper" else " (tiny-clip)")
        elif name == "evaluation.inception_path":
            torch.jit.script(_PooledInception() if scale == "tiny" else _Inception().eval()).save(str(path))
            placed[name] = "a random Inception stand-in (TorchScript, a `layers` submodule)"
        elif name == "evaluation.lpips_backbone_weights":
            torch.save(torchvision.models.alexnet(weights=None).features.state_dict(), path)
            placed[name] = "random AlexNet features"
        elif name == "evaluation.identity_weights":
            torch.save(ArcFaceIRSE(50).state_dict(), path)
            placed[name] = "random ArcFace IR-SE50 weights"
        else:
            raise RuntimeError(f"no stand-in for {name} ({path}): add one to place_stand_ins")
    return placed


class NodeCostHook:
    """Each node's wall time and peak memory (CUDA allocator peak, else the process's peak RSS)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._started: tuple[str, float] | None = None

    @staticmethod
    def _peak_rss_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    @hook_impl
    def before_node_run(self, node) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux 4.0+)
        except OSError:
            pass  # the peak then runs from the process's start
        self._started = (node.name, time.perf_counter())

    @hook_impl
    def after_node_run(self, node) -> None:
        if self._started is None:
            return
        name, t0 = self._started
        gpu = None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            gpu = torch.cuda.max_memory_allocated() / 2**30
        self.rows.append({"node": name, "wall_s": time.perf_counter() - t0, "peak_gpu_gib": gpu,
                          "peak_rss_mib": self._peak_rss_mib()})
        self._started = None
        print(f"node {name}: {self.rows[-1]['wall_s']:.1f} s", flush=True)


def merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, block by block."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [f"# `kedro run --env=paper --pipeline={results['pipeline']}` on stand-ins ({results['scale']} scale)",
             "", "Every input is a stand-in (random images, randomly initialised weights): the metrics this run wrote "
             "are from substitute weights and mean nothing; the walls and the memory are the measurement.", "",
             f"Device: {env.get('gpu', env['device'])} (CPU: {env['cpu']}), torch {env['torch']}. Parameters over conf/paper: "
             f"`{json.dumps(results['params'])}`", "", "| stand-in | what |", "|---|---|"]
    lines += [f"| {name} | {what} |" for name, what in results["stand_ins"].items()]
    lines += ["", "| node | wall s | peak GPU GiB | peak RSS MiB |", "|---|---|---|---|"]
    for r in results["nodes"]:
        gpu = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        lines.append(f"| {r['node']} | {r['wall_s']:.1f} | {gpu} | {r['peak_rss_mib']:.0f} |")
    total = sum(r["wall_s"] for r in results["nodes"])
    lines += ["", f"Nodes {total:.0f} s; the whole rehearsal (copy, stand-ins, both runs) {results['wall_s']:.0f} s, "
              f"of which the stand-ins {results['stand_ins_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the project copy, results.md and .json")
    ap.add_argument("--scale", choices=("paper", "tiny"), default="paper")
    ap.add_argument("--pipeline", default="sdft_aahq")
    ap.add_argument("--params", default=None, help="more parameters over the scale's, as kedro run --params k=v,...")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    proj = scratch_project(args.out)
    missing = missing_inputs(proj, args.pipeline)
    placed = place_stand_ins(proj, missing, args.scale)
    stand_ins_s = time.perf_counter() - started
    params = merge(TINY_RUN if args.scale == "tiny" else REHEARSAL, runtime_params(args.params) if args.params else {})
    hook = NodeCostHook()
    run_pipeline(proj, args.pipeline, params, hooks=(hook,))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"pipeline": args.pipeline, "scale": args.scale, "params": params, "stand_ins": placed,
               "environment": {**environment(device), "cpu": cpu_bf16().describe()}, "nodes": hook.rows, "stand_ins_s": stand_ins_s,
               "wall_s": time.perf_counter() - started}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = to_markdown(results)
    (args.out / "results.md").write_text(text)
    print(text, flush=True)
    return results


if __name__ == "__main__":
    main()
