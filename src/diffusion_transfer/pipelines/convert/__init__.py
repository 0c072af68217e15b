"""ADM checkpoint conversion stage: ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
