"""ANL's semi-supervised augmentation stage (Table 2): ``nodes.py`` (functions), ``pipeline.py`` (wiring)."""
