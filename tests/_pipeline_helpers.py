"""Shared by the pipeline tests: the project root, the methods, each
environment's data root, a scratch copy of the project, ``kedro run`` in it and
a folder of random images."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ["scratch", "naive", "sdft", "attn", "a3ft", "anl", "anl_uncond", "naive_clip", "tan"]
#: Methods run only on text-to-image sources: no run of them on the pixel and latent datasets.
TEXT_TO_IMAGE_ONLY = ["dreambooth"]
# Each environment writes under its own data root (conf/<env>/globals.yml).
SMOKE_DATA = Path("data", "smoke")
PAPER_DATA = Path("data", "paper")


def load_script(relative: str):
    """A script of the repository that is not in the package (``benchmarks/x.py``, ``docs/x.py``), as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scratch_project(tmp_path: Path) -> Path:
    """A copy of the project under ``tmp_path/project`` to run in (benchmarks/paper_rehearsal.py makes it)."""
    return _rehearsal().scratch_project(tmp_path)


@functools.lru_cache(maxsize=1)
def _rehearsal():
    return load_script("benchmarks/paper_rehearsal.py")


def _run(proj: Path, env: str, pipeline: str, runtime_params: dict | None = None,
         to_outputs: list[str] | None = None) -> None:
    """``kedro run --pipeline=<pipeline> --env=<env> [--params ...] [--to-outputs ...]`` in the project ``proj``."""
    import os

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    old = Path.cwd()
    os.chdir(proj)
    try:
        bootstrap_project(proj)
        with KedroSession.create(project_path=proj, env=env, runtime_params=runtime_params) as session:
            session.run(pipeline_names=[pipeline], to_outputs=to_outputs)
    finally:
        os.chdir(old)


def _image_folder(tmp_path: Path, n: int, bad: int = 0, name: str = "fewshot", seed: int = 0):
    from PIL import Image

    from diffusion_transfer.datasets.folders import ImageFolder

    root = tmp_path / name
    root.mkdir()
    rng = __import__("numpy").random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype="uint8")).save(root / f"img_{i:03d}.png")
    for i in range(bad):
        (root / f"broken_{i}.png").write_bytes(b"not an image")
    return ImageFolder(root, sorted(root.iterdir()))
