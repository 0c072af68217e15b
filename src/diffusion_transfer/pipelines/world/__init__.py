"""FaceWorld's model-building stage: ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
