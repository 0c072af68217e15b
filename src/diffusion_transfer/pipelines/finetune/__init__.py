"""Fine-tuning stage: ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
