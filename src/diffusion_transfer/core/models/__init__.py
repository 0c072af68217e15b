"""Model construction, loading and saving."""

from .adapted import AdaptedUNet, parameter_counts
from .unet import ModelLoadError, build_unet, learns_variance, load_unet, model_output, predict_eps, save_unet

__all__ = [
    "AdaptedUNet",
    "ModelLoadError",
    "build_unet",
    "learns_variance",
    "load_unet",
    "model_output",
    "parameter_counts",
    "predict_eps",
    "save_unet",
]
