"""Asyrp editing stage: ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
