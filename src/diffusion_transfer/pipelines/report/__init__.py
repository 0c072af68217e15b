"""Report stage: ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
