"""Kedro datasets for the project's own artifacts.

Small reports (JSON, Markdown, PNG, plots) use kedro-datasets; these classes
cover what kedro-datasets has no type for: diffusers models, tensors in
safetensors files, image folders (FaceWorld-rendered or real), and the world
models. Every save is atomic (write to a temporary sibling, then rename) so a
crash never leaves a half-written artifact.
"""

from diffusion_transfer.datasets.autoencoders import AutoencoderDataset
from diffusion_transfer.datasets.folders import ImageFolderDataset
from diffusion_transfer.datasets.models import (
    AttributeClassifierDataset,
    ClipDataset,
    DomainClassifierDataset,
    UNetDataset,
)
from diffusion_transfer.datasets.tensors import TensorDictDataset

__all__ = [
    "AttributeClassifierDataset",
    "AutoencoderDataset",
    "ClipDataset",
    "DomainClassifierDataset",
    "ImageFolderDataset",
    "TensorDictDataset",
    "UNetDataset",
]
