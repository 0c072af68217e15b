"""ANL's condition experiments stage: ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
