"""Kedro's entry point for the project's pipelines (found by this name); they are made in ``project/registry.py``."""

from diffusion_transfer.project.registry import register_pipelines

__all__ = ["register_pipelines"]
