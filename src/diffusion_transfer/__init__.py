"""diffusion-transfer: SDFT self-distillation fine-tuning of diffusion models
and the methods it is compared with.

Importing the package has no side effect: glibc's malloc is tuned for large
CPU tensors when a run starts (:mod:`diffusion_transfer.project.startup`).
"""
