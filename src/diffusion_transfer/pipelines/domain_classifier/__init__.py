"""Domain classifier stage (TAN's guidance, EGSDE's realism energy): ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
