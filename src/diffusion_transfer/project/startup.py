"""What a run sets up before anything else: glibc's malloc settings for large
CPU tensors (:mod:`diffusion_transfer.core.allocator`). Applied when a run
starts, not when the package is imported, so that importing it changes nothing
in the importing process."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from diffusion_transfer.core.allocator import tune_malloc_at_startup


class MallocTuningHook:
    """Tunes malloc as soon as the run's context exists, before any dataset
    loads or node allocates (``DT_MALLOC_TUNING=0`` turns it off)."""

    @hook_impl(tryfirst=True)  # pluggy calls hooks last-registered first: ask to go before the others
    def after_context_created(self, context) -> None:
        tune_malloc_at_startup()
