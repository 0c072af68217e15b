"""Experiment tracking with mlflow through kedro-mlflow (docs/TRACKING.md).

``hook.TrackingHook`` (registered in settings.py) runs kedro-mlflow's hook
when tracking is on (``tracking.enabled``, ``DT_TRACKING``) and logs this
project's records (``records``) through ``logger.RunLogger``.
"""

from diffusion_transfer.tracking.hook import ENV_SWITCH, TrackingHook, tracking_enabled

__all__ = ["ENV_SWITCH", "TrackingHook", "tracking_enabled"]
