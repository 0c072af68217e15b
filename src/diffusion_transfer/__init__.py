"""diffusion-transfer: SDFT self-distillation fine-tuning of diffusion models
and the methods it is compared with.

Importing the package tunes glibc's malloc for large CPU tensors
(:mod:`diffusion_transfer.core.allocator`; ``DT_MALLOC_TUNING=0`` turns it off).
"""

from diffusion_transfer.core.allocator import tune_malloc_at_startup

tune_malloc_at_startup()
