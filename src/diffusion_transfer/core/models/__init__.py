"""Model construction, loading and saving."""

from .unet import ModelLoadError, build_unet, learns_variance, load_unet, predict_eps, save_unet

__all__ = ["ModelLoadError", "build_unet", "learns_variance", "load_unet", "predict_eps", "save_unet"]
