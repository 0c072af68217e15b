"""Kedro under ``torchrun`` / ``accelerate launch`` (docs/DISTRIBUTED.md).

Each process of such a run executes the whole pipeline; the training node's
``train()`` joins the process group (``core/training/launch.py``), every other
node computes the same thing in every process. :class:`DistributedRunHook`
makes that safe for the files: only rank 0 writes catalog outputs. The other
ranks keep what their nodes save in memory (:class:`RankLocalDataset`), so a
later node of theirs reads their own result, never a file rank 0 may be
halfway through writing. It also pins each process to its own GPU
(``LOCAL_RANK``) before any node runs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset, MemoryDataset, SharedMemoryDataset

log = logging.getLogger(__name__)


def process_ranks() -> tuple[int, int, int]:
    """(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) as torchrun and accelerate set them; (0, 0, 1) outside."""
    def read(key: str, default: int) -> int:
        value = os.environ.get(key, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"environment variable {key}={value!r} is not an integer") from None

    return read("RANK", 0), read("LOCAL_RANK", 0), read("WORLD_SIZE", 1)


class RankLocalDataset(AbstractDataset):
    """A catalog output of a non-zero rank: ``save`` keeps the data in memory;
    ``load`` returns it, or loads the wrapped dataset when nothing was saved in
    this run (an input written by an earlier run)."""

    def __init__(self, dataset: AbstractDataset) -> None:
        self._dataset = dataset
        self._memory = MemoryDataset()

    def _load(self) -> Any:
        return self._memory.load() if self._memory.exists() else self._dataset.load()

    def _save(self, data: Any) -> None:
        self._memory.save(data)

    def _exists(self) -> bool:
        return self._memory.exists() or self._dataset.exists()

    def _release(self) -> None:
        self._memory.release()
        self._dataset.release()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": type(self._dataset).__name__, "saves": "kept in memory (not rank 0)"}


class _NoReplacingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Replacing dataset")


class DistributedRunHook:
    """In a run with ``WORLD_SIZE > 1``: each process on GPU ``LOCAL_RANK``;
    on ranks other than 0, every persisted output of the pipeline wrapped in a
    :class:`RankLocalDataset`. Does nothing in an ordinary run."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        rank, local_rank, world_size = process_ranks()
        if world_size <= 1:
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        if rank == 0:
            return
        catalog_log = logging.getLogger("kedro.io.data_catalog")  # DataCatalog._logger
        quiet = _NoReplacingWarning()  # the replacement is the point here, not a mistake
        catalog_log.addFilter(quiet)
        try:
            wrapped = []
            for name in sorted(pipeline.all_outputs()):
                dataset = catalog.get(name)  # materialises entries from dataset factories too
                if dataset is None or isinstance(dataset, (MemoryDataset, SharedMemoryDataset, RankLocalDataset)):
                    continue
                catalog[name] = RankLocalDataset(dataset)
                wrapped.append(name)
        finally:
            catalog_log.removeFilter(quiet)
        log.info("rank %d of %d: %d catalog output(s) kept in memory, rank 0 writes them", rank, world_size,
                 len(wrapped))
